"""Content keys (arrays, checkpoint folders, modules in memory) and config-keyed artifacts: caches and resumable
checkpoints are found by what they were made from, never by a path."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

from udet_core.core.io import atomic_write_bytes, atomic_write_json
from udet_core.core.profiles import config_dict, config_hash
from udet_core.core.provenance import provenance


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
