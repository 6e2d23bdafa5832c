"""Atomic writes (readers never see half a file), result tables, checkpoint metadata."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from udet_core.core.errors import DataError


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same folder and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())   # mkstemp makes 0600; a result file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def checkpoint_meta(folder, filename: str, kind: str) -> dict:
    """The JSON metadata file of a saved checkpoint; a clear error naming the folder when it is not one."""
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


@contextlib.contextmanager
def output_lock(path):
    """Hold `<path>.lock` (the holder's process id inside) while a run writes `path`: `DataError` when a live
    process holds it; a lock left by a process that died is taken over. Removed when the block ends."""
    lock = Path(f"{Path(path)}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise DataError(path, f"is being written by another run (process {pid}; lock file {lock}): wait for "
                                      "it to finish or choose another --out") from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()   # stale: its process is gone
    else:
        raise DataError(path, f"could not take the lock {lock}; remove it if no run is writing {path}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
