"""Run directories: atomic writes, config-keyed artifact caching, and the provenance every result carries."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .profiles import config_dict, config_hash

REPO_ROOT = Path(__file__).resolve().parent.parent


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same folder and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def array_key(a) -> str:
    """A short hash of an array or tensor (shape, dtype and bytes): the key of per-image caches."""
    import numpy as np
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.shape}{a.dtype}".encode() + a.tobytes()).hexdigest()[:16]


CONTENT_KEY_FILE = ".udet-content-key.json"


def content_key(path) -> str:
    """A short sha256 of a checkpoint folder's (or file's) contents: every file's relative path and bytes. Kept
    beside it in `.udet-content-key.json` with each file's size and modification time, and recomputed when any of
    them changes, so a checkpoint rebuilt or replaced at the same path gets a new key (caches are keyed by content,
    never by a path). A read-only folder is hashed again on every call."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or folder")
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name != CONTENT_KEY_FILE) if path.is_dir() else [path]
    stats = [[str(f.relative_to(path)) if path.is_dir() else f.name, f.stat().st_size, f.stat().st_mtime_ns]
             for f in files]
    record = path / CONTENT_KEY_FILE if path.is_dir() else path.with_name(f"{path.name}{CONTENT_KEY_FILE}")
    with contextlib.suppress(OSError, ValueError, KeyError):
        stored = json.loads(record.read_text())
        if stored["files"] == stats:
            return stored["key"]
    h = hashlib.sha256()
    for (rel, _, _), f in zip(stats, files):
        h.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    key = h.hexdigest()[:16]
    with contextlib.suppress(OSError):
        atomic_write_json(record, {"key": key, "files": stats})
    return key


def module_key(*modules) -> str:
    """A short sha256 of modules' parameters and buffers (names, shapes, bytes): the content key of a backbone held
    in memory only."""
    import torch
    h = hashlib.sha256()
    for m in modules:
        for name, t in m.state_dict().items():
            raw = t.detach().cpu().contiguous().view(-1).view(torch.uint8)
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode() + raw.numpy().tobytes())
    return h.hexdigest()[:16]


def cached_tensors(path, compute) -> dict:
    """`compute()` (a dict of tensors), kept in the safetensors file `path` and read from it when present
    (`path=None`: no cache)."""
    from safetensors.torch import load_file, save
    if path is not None and Path(path).is_file():
        return load_file(str(path))
    out = compute()
    if path is not None:
        atomic_write_bytes(path, save({k: v.contiguous() for k, v in out.items()}))
    return out


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def checkpoint_meta(folder, filename: str, kind: str) -> dict:
    """The JSON metadata file of a saved checkpoint; a clear error naming the folder when it is not one."""
    from .data.images import DataError
    path = Path(folder) / filename
    if not path.is_file():
        raise DataError(folder, f"not a {kind} checkpoint ({filename} missing)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"is not valid JSON ({e}): the {kind} checkpoint is damaged; retrain it") from None
    if not isinstance(meta, dict):
        raise DataError(path, f"is not a {kind} checkpoint's metadata (a JSON object expected)")
    return meta


def write_table(df, path_stem, provenance: dict | None = None) -> list[Path]:
    """Save a results DataFrame as CSV and Markdown (plus a JSON provenance side file)."""
    stem = Path(path_stem)
    out = [atomic_write_text(stem.with_suffix(".csv"), df.to_csv(index=False)),
           atomic_write_text(stem.with_suffix(".md"), df.to_markdown(index=False) + "\n")]
    if provenance is not None:
        out.append(atomic_write_json(stem.with_suffix(".json"), provenance))
    return out


def code_version() -> str:
    """Git commit of the workbench (with '-dirty' if the tree has changes), or the package version."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
        if rev.returncode == 0 and rev.stdout.strip():
            return rev.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    from . import __version__
    return __version__


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and finished children) in MiB."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, child_kb) / 1024.0


def provenance(cfg=None, seed: int | None = None, timings: dict | None = None, **extra) -> dict:
    """What every result file records: config, seed, code version, timings, machine."""
    import torch
    rec = {
        "config": config_dict(cfg) if cfg is not None else None,
        "seed": seed,
        "code_version": code_version(),
        "timings_s": timings or {},
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rec.update(extra)
    return rec


class Artifact:
    """A folder under `<run_dir>/artifacts/<name>-<config hash>`, complete once `done.json` exists.

    Building writes into `<folder>.partial` (which a training loop may checkpoint into and resume from)
    and renames it into place at the end, so a finished artifact is never half-written.
    """

    def __init__(self, run_dir, name: str, *cfgs):
        self.key = config_hash(*cfgs)
        self.cfgs = cfgs
        self.path = Path(run_dir) / "artifacts" / f"{name}-{self.key}"
        self.partial = self.path.with_name(self.path.name + ".partial")

    @property
    def done(self) -> bool:
        return (self.path / "done.json").exists()

    def begin(self) -> Path:
        self.partial.mkdir(parents=True, exist_ok=True)
        return self.partial

    def commit(self, **info) -> Path:
        """Record provenance and move the finished artifact into place."""
        cfg_dicts = [config_dict(c) if hasattr(c, "__dataclass_fields__") else c for c in self.cfgs]
        atomic_write_json(self.partial / "done.json", provenance(None, **info, configs=cfg_dicts))
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.partial, self.path)
        return self.path

    def info(self) -> dict:
        return json.loads((self.path / "done.json").read_text())


class Timer:
    """Collects wall-clock timings by name: `with timer("train_vae"): ...`."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)


class PeakRSS:
    """Peak resident memory (MiB) while a block runs, sampled in a background thread: of this process, or of
    its children (a notebook kernel) with `children=True`."""

    def __init__(self, children: bool = False, interval: float = 0.05):
        import psutil
        self.proc, self.children, self.interval, self.peak_mb = psutil.Process(), children, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        import psutil
        procs = self.proc.children(recursive=True) if self.children else [self.proc]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._rss() / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss() / 2**20)
