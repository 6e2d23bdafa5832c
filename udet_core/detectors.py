"""The detector registry: one small interface for every detector, so one evaluation makes every table.

A detector is a class with
  - `__init__(p, run_dir)`  its settings come from the profile; `run_dir` holds the benchmark's backbones;
  - `fit(images, df, seed, out_dir, progress)`  train on these rows (uint8 NHWC images + manifest rows);
    training-free detectors set `trains = False` and inherit a `fit` that does nothing;
  - `score(images, progress) -> np.ndarray`  one score per image, higher = more likely fake;
  - `save(folder)` / `load(folder, p, run_dir)`.
and one registration: `@register("name")`. The harness (`fitted`) caches each fitted detector as an artifact,
calibrates its decision threshold on the validation split (never the test split) and stores it with it.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import calibrate_threshold
from .runs import PeakRSS, array_key, atomic_write_bytes, atomic_write_json

DETECTORS: dict[str, type] = {}
BUILTIN_MODULES = ("udet_core.craft", "udet_core.baselines.dire", "udet_core.baselines.aeroblade",
                   "udet_core.baselines.cnnspot", "udet_core.gduf")


class Detector:
    """Base class: the interface every registered detector implements."""
    name = ""
    trains = True
    threshold: float | None = None
    use_cache = True     # detectors that cache per-image work (DIRE's reconstructions) honour this flag

    def __init__(self, p, run_dir):
        self.p, self.run_dir = p, Path(run_dir)

    def config(self):
        """What determines this detector besides the benchmark (part of its artifact key): its config, and the
        content keys of any backbone it reads and the resolved names of any distance it uses."""
        return None

    def fit(self, images: np.ndarray, df: pd.DataFrame, *, seed: int, out_dir: Path, progress: bool = False,
            val: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
        """Train on the rows (uint8 images + manifest rows); `val` = (images, labels) of the validation rows, for a
        detector that stops early on them (never the test split). Returns what to record about the fit."""
        return {}

    def score(self, images: np.ndarray, *, progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def calibrate(self, images: np.ndarray, labels: np.ndarray, *, progress: bool = False) -> None:
        """Set the decision threshold from validation images (never the test split)."""
        self.threshold = calibrate_threshold(self.score(images, progress=progress), labels)

    def save(self, folder: Path) -> None:
        pass

    @classmethod
    def load(cls, folder: Path, p, run_dir) -> "Detector":
        return cls(p, run_dir)


def register(name: str):
    """Class decorator: make a Detector subclass available as `name`."""
    def deco(cls):
        cls.name = name
        DETECTORS[name] = cls
        return cls
    return deco


def detector_class(name: str) -> type:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; registered: {sorted(DETECTORS)}")
    return DETECTORS[name]


def rows_key(df: pd.DataFrame, images: np.ndarray) -> str:
    """Which rows a detector was fitted on, by content (part of its artifact key): the images' bytes and the
    manifest's own columns but the path, so a run directory moved or copied elsewhere keeps its cached detectors, and
    columns a notebook derives (e.g. `content`) do not change the key."""
    from .data.manifest import COLUMNS
    table = df[[c for c in COLUMNS if c != "path" and c in df.columns]].to_csv(index=False).encode()
    return hashlib.sha256(array_key(images).encode() + table).hexdigest()[:10]


def cached_scores(det: Detector, images: np.ndarray, progress: bool = False) -> np.ndarray:
    """`det.score(images)`, kept in the fitted detector's artifact folder under a hash of the images, so an
    interrupted or repeated evaluation never scores the same images with the same detector twice."""
    path = Path(det.folder) / "scores" / f"{array_key(images)}.npy"
    if path.is_file():
        return np.load(path)
    s = np.asarray(det.score(images, progress=progress), dtype=float)
    buf = io.BytesIO()
    np.save(buf, s)
    atomic_write_bytes(path, buf.getvalue())
    return s


def scoring_cost(det: Detector, images: np.ndarray) -> dict:
    """Throughput and memory of scoring `images` from scratch (caches off): images/s, the process's peak
    resident memory while scoring, and how far that peak rose above the resident memory before it (MiB)."""
    import psutil
    before = psutil.Process().memory_info().rss / 2**20
    det.use_cache = False
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            det.score(images)
            wall = time.perf_counter() - t0
    finally:
        det.use_cache = True
    return {"images_per_s": len(images) / max(wall, 1e-9), "peak_rss_mb": mem.peak_mb,
            "scoring_extra_mb": max(0.0, mem.peak_mb - before)}


def fitted(name: str, p, run_dir, images: np.ndarray, df: pd.DataFrame, *, seed: int, train_mask=None,
           val_mask=None, progress: bool = False, force: bool = False) -> Detector:
    """The detector `name` fitted on the train rows (default: split == train) with this seed, its threshold
    calibrated on the val rows (default: split == val); cached under `<run_dir>/artifacts/det-<name>-<hash>`."""
    from .benchmark import method_artifact
    cls = detector_class(name)
    train_mask = (df["split"] == "train").to_numpy() if train_mask is None else np.asarray(train_mask)
    val_mask = (df["split"] == "val").to_numpy() if val_mask is None else np.asarray(val_mask)
    det = cls(p, run_dir)
    art = method_artifact(run_dir, f"det-{name}", p, det.config(), seed, rows_key(df[train_mask], images[train_mask]),
                          rows_key(df[val_mask], images[val_mask]))
    if art.done and not force:
        det = cls.load(art.path, p, run_dir)
        meta = json.loads((art.path / "detector.json").read_text())
        det.threshold, det.fit_s, det.folder = meta["threshold"], meta["fit_s"], art.path
        return det
    out = art.begin()
    t0 = time.perf_counter()
    val = images[val_mask], df["label"].to_numpy()[val_mask]
    info = det.fit(images[train_mask], df[train_mask].reset_index(drop=True), seed=seed, out_dir=out,
                   progress=progress, val=val) if det.trains else {}
    det.fit_s = round(time.perf_counter() - t0, 2)   # a fit resumed from a checkpoint counts only the resumed part
    det.calibrate(*val, progress=progress)
    det.save(out)
    atomic_write_json(out / "detector.json", {"name": name, "threshold": det.threshold, "seed": seed,
                                              "fit_s": det.fit_s, "info": info})
    art.commit(seed=seed, timings_s={"fit": det.fit_s})
    det.folder = art.path
    return det
