"""What every result records: code version, config, seed, timings, machine and memory."""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import threading
import time

from udet_core import __version__
from udet_core.core.paths import REPO_ROOT
from udet_core.core.profiles import config_dict


def code_version() -> str:
    """Git commit of the workbench (with '-dirty' if the tree has changes), or the package version."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
        if rev.returncode == 0 and rev.stdout.strip():
            return rev.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
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
