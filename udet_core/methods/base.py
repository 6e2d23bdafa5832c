"""The detector registry: one small interface for every detector, so one evaluation makes every table.

A detector is a class with
  - `__init__(p, run_dir, backbone, weights)`  its settings come from the profile; `run_dir` holds its caches;
    `weights` (`Weights`) names the pretrained folders it starts from, handed in by the caller
    (`world.weights.default_weights` for the stand-ins; a `backbone` replaces the one it reads);
  - `fit(train, seed, out_dir, progress, val, workers)`  train on a data set of rows (`data.dataset`: streamed
    from disk, or `ArrayDataset` in memory); training-free detectors set `trains = False` and inherit a `fit` that
    does nothing;
  - `score(images, progress) -> np.ndarray`  one score per image, higher = more likely fake;
  - `save(folder)` / `load(folder, p, run_dir)`;
  - `weights_needed`: which `Weights` fields it reads when no `backbone` is given.
and one registration: `@register("name")`. The harness (`fitted`) caches each fitted detector as an artifact,
calibrates its decision threshold on the validation split (never the test split) and stores it with it.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from udet_core.core.errors import DataError
from udet_core.core.io import atomic_write_bytes, atomic_write_json, checkpoint_meta
from udet_core.core.keys import Artifact, array_key
from udet_core.core.profiles import (
    PROFILES,
    Profile,
    config_dict,
    from_config_dict,
    get_profile,
)
from udet_core.core.progress import tqdm
from udet_core.core.provenance import PeakRSS
from udet_core.data.dataset import ArrayDataset
from udet_core.data.manifest import COLUMNS
from udet_core.engine.metrics import calibrate_threshold

DETECTORS: dict[str, type] = {}
PROBABILITY_SCORES = ("craft", "dire", "cnnspot", "unigendet")   # scores in [0, 1] (AEROBLADE's is a distance)
BUILTIN_MODULES = ("udet_core.methods.craft", "udet_core.methods.dire", "udet_core.methods.aeroblade",
                   "udet_core.methods.cnnspot", "udet_core.methods.gduf")


WEIGHT_NAMES = ("image_variation", "vae", "unified")


@dataclass(frozen=True)
class Weights:
    """The pretrained folders detectors start from, handed in by whoever builds a detector (a method never looks
    them up itself); recorded in the checkpoint, so a saved detector reloads with what it was trained on."""
    image_variation: str | None = None   # a StableDiffusionImageVariationPipeline folder (CRAFT, DIRE)
    vae: str | None = None               # an AutoencoderKL folder (AEROBLADE; UniGenDet's latents from scratch)
    unified: str | None = None           # a pretrained UniGenDet folder that GDUF fine-tunes (None: from scratch)

    def folder(self, name: str, who: str) -> Path:
        """The folder of weight `name`; `DataError` naming the detector when none was handed in."""
        value = getattr(self, name)
        if not value:
            raise DataError(name, f"{who} needs {name} weights and none were handed in: pass a backbone, or the "
                                  "stand-ins of `udet_core.world.weights.default_weights`")
        if not Path(value).exists():
            raise DataError(value, f"the {name} weights {who} was trained with are gone (moved or deleted): restore "
                                   "them, or pass --backbone with the same weights")
        return Path(value)


class Detector:
    """Base class: the interface every registered detector implements."""
    name = ""
    trains = True
    threshold: float | None = None
    fit_info: dict = {}   # what `fit` reported (recorded in detector.json), e.g. CRAFT's model selection
    use_cache = True     # detectors that cache per-image work (DIRE's reconstructions) honour this flag
    takes_backbone = ""  # what `backbone` (CLI --backbone) names for this detector; "" = it takes none
    needs_explanations = False   # trains on the manifest's reference explanations (UniGenDet)
    weights_needed: tuple[str, ...] = ()   # the `Weights` fields it reads when no backbone is given
    config_section = ""   # the profile field holding its settings (`self.cfg`); a checkpoint records only that one
    published_size: int | None = None   # the input side its paper / official code uses (`input_size` on foreign data)

    def __init__(self, p, run_dir, backbone=None, weights: Weights | None = None):
        """`backbone`: a path (or, for detectors built on several, a list of paths) replacing the default backbone
        of `weights` (the zoo's / the run directory's stand-ins are just the defaults)."""
        if backbone and not self.takes_backbone:
            raise DataError(backbone if isinstance(backbone, str) else backbone[0], f"{self.name} takes no backbone")
        self.p, self.run_dir, self.backbone = p, Path(run_dir), backbone
        self.cfg = getattr(p, self.config_section) if self.config_section else None
        self.weights = weights or Weights()
        self.bad_files: list[dict] = []   # {"path", "problem"} of the files fit and calibration skipped

    def single_backbone(self) -> Path:
        """The one diffusers pipeline folder this detector reads: the given `backbone`, else its image_variation
        weights."""
        b = self.backbone
        if isinstance(b, (list, tuple)):
            if len(b) != 1:
                raise DataError(b[0], f"{self.name} takes one backbone ({self.takes_backbone}); got {len(b)}")
            b = b[0]
        path = Path(b) if b else self.weights.folder("image_variation", self.name)
        if not (path / "model_index.json").is_file():
            raise DataError(path, f"not a diffusers pipeline folder (model_index.json missing); {self.name} takes "
                                  f"{self.takes_backbone}")
        return path

    def config(self):
        """What determines this detector besides the benchmark (part of its artifact key): its config, and the
        content keys of any backbone it reads and the resolved names of any distance it uses."""
        return None

    def fit(self, train, *, seed: int, out_dir: Path, progress: bool = False, val=None, workers: int = 0) -> dict:
        """Train on the rows of the data set `train` (`data.dataset.ImageDataset`, streamed with `workers`
        DataLoader workers, or `ArrayDataset`); `val` = the validation rows, for a detector that stops early on
        them (never the test split). Returns what to record about the fit."""
        return {}

    def score(self, images: np.ndarray, *, progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def raw_signal(self, images: np.ndarray, *, progress: bool = False) -> np.ndarray | None:
        """The raw signal a learned score is built on (CRAFT: the reconstruction distance d under its P(fake)), to
        be shown beside it; None when the score is the signal itself or has none."""
        return None

    def calibrate(self, val, *, progress: bool = False, workers: int = 0) -> None:
        """Set the decision threshold from the validation data set `val` (never the test split)."""
        s, labels = self.validation_scores(val, progress=progress, workers=workers)
        self.threshold = calibrate_threshold(s, labels)

    def validation_scores(self, val, *, progress: bool = False, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) of the rows of `val` that could be read: streamed through `score_dataset`, or, in
        memory (`ArrayDataset`), scored in one call (which shares per-array caches with early stopping)."""
        if isinstance(val, ArrayDataset):
            return np.asarray(self.score(val.images, progress=progress), float), val.manifest["label"].to_numpy()
        s, problems = score_dataset(self, val, batch_size=64, num_workers=workers, progress=progress)
        self.bad_files += [{"path": str(path), "problem": why} for path, why in problems]
        ok = ~np.isnan(s)
        return s[ok], val.manifest["label"].to_numpy()[ok]

    def uncached(self) -> "Detector":
        """This detector without per-image caches (data of unknown size, timing from scratch): a shallow copy that
        shares the weights and threshold; this one is left as it is."""
        other = copy.copy(self)
        other.use_cache = False
        return other

    def save(self, folder: Path) -> None:
        pass

    @classmethod
    def load(cls, folder: Path, p, run_dir) -> "Detector":
        return cls(p, run_dir)


def input_size(cls: type, p, on_udet_mini: bool, set_by_user: bool,
               smallest_side: int | None = None) -> tuple[int, str]:
    """(input side in pixels, why) a detector `cls` trains at: the profile's `data.resolution` on udet-mini or when
    `--set data.resolution` gave it; on other data its published size (`Detector.published_size`) unless the profile
    says `data.foreign_resolution = "profile"`, capped at the largest multiple of 8 within `smallest_side` (the
    smallest image, for policy center-crop, which never upscales; None: no cap)."""
    if on_udet_mini or set_by_user:
        return p.data.resolution, "udet-mini's resolution" if on_udet_mini else "set by --set data.resolution"
    if p.data.foreign_resolution == "published" and cls.published_size:
        if smallest_side is not None and smallest_side < cls.published_size:
            return max(8, smallest_side - smallest_side % 8), (
                f"the smallest image is {smallest_side} px, below {cls.name}'s published {cls.published_size} px, and "
                "center-crop never upscales")
        return cls.published_size, f"{cls.name}'s published input size"
    return p.data.resolution, f"profile {p.name}'s data.resolution"


def register(name: str):
    """Class decorator: make a Detector subclass available as `name`."""
    def deco(cls):
        cls.name = name
        DETECTORS[name] = cls
        return cls
    return deco


def list_detectors() -> list[str]:
    """The registered detectors' names (the built-in ones and any registered since)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return sorted(DETECTORS)


def detector_class(name: str) -> type:
    if name not in list_detectors():
        raise ValueError(f"unknown detector {name!r}; registered: {list_detectors()}")
    return DETECTORS[name]


def create_detector(name: str, p, run_dir, backbone=None, weights: Weights | None = None) -> Detector:
    """A new, unfitted detector `name` with the profile's settings (timm's `create_model`)."""
    return detector_class(name)(p, run_dir, backbone, weights)


def rows_key(df: pd.DataFrame, images: np.ndarray) -> str:
    """Which rows a detector was fitted on, by content (part of its artifact key): the images' bytes and the
    manifest's own columns but the path, so a run directory moved or copied elsewhere keeps its cached detectors, and
    columns a notebook derives (e.g. `content`) do not change the key."""
    table = df[[c for c in COLUMNS if c != "path" and c in df.columns]].to_csv(index=False).encode()
    return hashlib.sha256(array_key(images).encode() + table).hexdigest()[:10]


def cached_scores(det: Detector, images: np.ndarray, progress: bool = False, raw: bool = False) -> np.ndarray | None:
    """`det.score(images)` (with `raw`: `det.raw_signal(images)`, None if it has none), kept in the fitted
    detector's artifact folder under a hash of the images, so an interrupted or repeated evaluation never scores the
    same images with the same detector twice."""
    path = Path(det.folder) / "scores" / f"{array_key(images)}{'-raw' if raw else ''}.npy"
    if path.is_file():
        return np.load(path)
    s = det.raw_signal(images, progress=progress) if raw else det.score(images, progress=progress)
    if s is None:
        return None
    s = np.asarray(s, dtype=float)
    buf = io.BytesIO()
    np.save(buf, s)
    atomic_write_bytes(path, buf.getvalue())
    return s


def scoring_cost(det: Detector, images: np.ndarray) -> dict:
    """Throughput and memory of scoring `images` from scratch (caches off): images/s, the process's peak
    resident memory while scoring, and how far that peak rose above the resident memory before it (MiB)."""
    import psutil
    before = psutil.Process().memory_info().rss / 2**20
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        det.uncached().score(images)
        wall = time.perf_counter() - t0
    return {"images_per_s": len(images) / max(wall, 1e-9), "peak_rss_mb": mem.peak_mb,
            "scoring_extra_mb": max(0.0, mem.peak_mb - before)}


def fitted(name: str, p, run_dir, images: np.ndarray, df: pd.DataFrame, *, seed: int, train_mask=None,
           val_mask=None, progress: bool = False, force: bool = False, backbone=None,
           weights: Weights | None = None) -> Detector:
    """The detector `name` (on `backbone`, default the profile's stand-in) fitted on the train rows (default:
    split == train) with this seed, its threshold calibrated on the val rows (default: split == val); cached under
    `<run_dir>/artifacts/det-<name>-<hash>` (the key holds the backbone's content)."""
    train_mask = (df["split"] == "train").to_numpy() if train_mask is None else np.asarray(train_mask)
    val_mask = (df["split"] == "val").to_numpy() if val_mask is None else np.asarray(val_mask)
    det = create_detector(name, p, run_dir, backbone, weights)
    art = detector_artifact(det, images, df, seed, train_mask, val_mask)
    if art.done and not force:
        return load_detector(art.path, run_dir, p, weights)
    out = art.begin()
    det = fit_detector(det, ArrayDataset(images[train_mask], df[train_mask]),
                       ArrayDataset(images[val_mask], df[val_mask]), seed=seed, out=out, progress=progress)
    art.commit(seed=seed, timings_s={"fit": det.fit_s})
    det.folder = art.path
    return det


def detector_artifact(det: Detector, images: np.ndarray, df: pd.DataFrame, seed: int, train_mask, val_mask):
    """The cache folder of a detector fitted on these rows, keyed by content: the detector's config (its weights'
    content keys included) + the seed + the content of the train and validation rows."""
    return Artifact(det.run_dir, f"det-{det.name}", det.config(), seed,
                    rows_key(df[train_mask], images[train_mask]), rows_key(df[val_mask], images[val_mask]))


def fit_detector(det: Detector, train, val, *, seed: int, out, progress: bool = False, workers: int = 0,
                 extra: dict | None = None) -> Detector:
    """Fit `det` on the data set `train` (training checkpoints in `out`, so a rerun resumes), calibrate its
    threshold on the data set `val`, and save it into `out` as a checkpoint `load_detector` reads: the detector's
    files + detector.json (name, threshold, seed, `checkpoint_settings`, config, backbone, `extra`)."""
    from accelerate import PartialState

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = det.fit(train, seed=seed, out_dir=out, progress=progress, val=val, workers=workers) if det.trains else {}
    det.fit_s = round(time.perf_counter() - t0, 2)   # a fit resumed from a checkpoint counts only the resumed part
    det.fit_info = info
    det.calibrate(val, progress=progress, workers=workers)
    if PartialState().is_main_process:
        det.save(out)
        atomic_write_json(out / "detector.json", {
            "name": det.name, "threshold": det.threshold, "seed": seed, "fit_s": det.fit_s, "info": info,
            "settings": checkpoint_settings(det), "config": _jsonable(det.config()), "backbone": det.backbone,
            "weights": dataclasses.asdict(det.weights),
            "run_dir": str(det.run_dir.resolve()), "bad_files": list({b["path"]: b for b in det.bad_files}.values()),
            **(extra or {})})
    det.folder = out
    return det


def checkpoint_settings(det: Detector) -> dict:
    """What a checkpoint records of the profile it was trained under: the profile's name (its stand-in weights), the
    input size, and the detector's own settings (`config_section`), not the whole profile."""
    section = det.config_section
    return {"profile": det.p.name, "resolution": det.p.data.resolution,
            **({section: config_dict(det.cfg)} if section else {})}


def checkpoint_profile(meta: dict, cls: type) -> Profile:
    """The profile a detector reloads with: the named profile (else `default`) with the checkpoint's input size and
    the detector's recorded settings (`checkpoint_settings`); a checkpoint written before those records keeps its
    whole profile under `profile`. `TypeError` / `ValueError` when the record does not fit this code version."""
    if "settings" not in meta:
        return from_config_dict(Profile, meta["profile"]) if meta.get("profile") else get_profile("default")
    s = meta["settings"]
    p = get_profile(s["profile"] if s.get("profile") in PROFILES else "default")
    p = dataclasses.replace(p, data=dataclasses.replace(p.data, resolution=int(s["resolution"])))
    if cls.config_section:
        own = getattr(p, cls.config_section)
        p = dataclasses.replace(p, **{cls.config_section: from_config_dict(type(own), s[cls.config_section])})
    return p


def _jsonable(x):
    import dataclasses

    return config_dict(x) if dataclasses.is_dataclass(x) else json.loads(json.dumps(x, default=str))


def load_detector(folder, run_dir=None, p=None, weights: Weights | None = None) -> Detector:
    """Any registered detector's checkpoint (a folder with detector.json): rebuilt with the profile (unless `p` is
    given), run directory (its caches), backbone and weights it was trained with (unless `weights` is given).
    `DataError` when the folder is no checkpoint, or when what the detector depends on (its config, its
    backbone's content, the distance network) differs here from what it was trained with."""
    import math

    folder = Path(folder)
    meta = checkpoint_meta(folder, "detector.json", "detector")
    try:
        cls = detector_class(meta.get("name"))
    except ValueError as e:
        raise DataError(folder / "detector.json", f"names no known detector ({e})") from None
    t = meta.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise DataError(folder / "detector.json", f"threshold {t!r} is not a finite number: the checkpoint is damaged; "
                                                  "retrain it")
    if not 0.0 <= t <= 1.0 + 1e-5 and cls.name in PROBABILITY_SCORES:   # calibration may add 1e-6 to the top
        raise DataError(folder / "detector.json", f"threshold {t!r} is outside [0, 1], but {cls.name} scores are "
                                                  "probabilities: the checkpoint is damaged; retrain it")
    try:
        p = p or checkpoint_profile(meta, cls)
    except (TypeError, ValueError, KeyError) as e:
        raise DataError(folder, f"its recorded settings do not fit this code version ({e!r})") from None
    recorded = meta.get("run_dir")   # its caches; a run directory moved or deleted since is never re-created
    run_dir = run_dir or (recorded if recorded and Path(recorded).is_dir() else folder)
    det = cls.load(folder, p, run_dir)
    det.backbone = meta.get("backbone")
    try:
        det.weights = weights or Weights(**(meta.get("weights") or {}))
    except TypeError as e:
        raise DataError(folder / "detector.json", f"its weights record does not fit this code version ({e})") from None
    if meta.get("config") is not None and _jsonable(det.config()) != meta["config"]:
        raise DataError(folder, f"this {meta['name']} checkpoint was trained with other settings or backbone content "
                                "than it would load with here (detector.json's config differs): retrain it")
    det.threshold, det.fit_s, det.folder = meta["threshold"], meta.get("fit_s"), folder
    det.fit_info = meta.get("info") or {}
    return det


def score_dataset(det: Detector, ds, *, batch_size: int = 64, num_workers: int = 0, progress: bool = False,
                  accelerator=None) -> tuple[np.ndarray, list]:
    """Every row of the lazy data set `ds` (`data.dataset.ImageDataset`) scored by `det` through a DataLoader,
    never holding more than a batch: (scores (len(ds),), NaN where the file was bad; [(path, problem)]).

    Under `accelerate launch` / `torchrun` each process scores a contiguous shard; the (row, score) pairs and the
    problems are gathered on every process (`gather_object`), so the result is independent of the process count.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = accelerator.state if accelerator is not None else PartialState()
    rows = np.array_split(np.arange(len(ds)), state.num_processes)[state.process_index]
    loader = ds.loader(batch_size, num_workers, pin_memory=torch.cuda.is_available(), rows=rows)
    pairs, problems = [], []
    for b in tqdm(loader, desc=f"score {det.name}", disable=not (progress and state.is_main_process)):
        problems += b.problems
        if len(b.index):
            s = np.asarray(det.score(b.images.numpy()), dtype=float)
            pairs += list(zip(b.index.tolist(), s.tolist()))
    if state.num_processes > 1:
        pairs, problems = gather_object(pairs), gather_object(problems)
    scores = np.full(len(ds), np.nan)
    for i, s in pairs:
        scores[i] = s
    return scores, problems
