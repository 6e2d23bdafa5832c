"""Data-set specs with the world's one name added: `udet-mini`, the embedded benchmark (a synthetic stand-in), built
or reused for a profile in a run directory; every other spec is a file spec of `data.dataset`."""
from __future__ import annotations

import pandas as pd

from udet_core.core.profiles import Profile
from udet_core.data.dataset import ImageDataset
from udet_core.data.dataset import read_spec as read_file_spec
from udet_core.data.manifest import read_manifest
from udet_core.world.benchmark import build_benchmark

EMBEDDED = "udet-mini"
EMBEDDED_LABEL = "udet-mini (synthetic stand-in)"


def read_spec(spec, p: Profile, run_dir) -> tuple[pd.DataFrame, dict]:
    """(manifest, description) of `udet-mini` (built or reused for `p` under `run_dir`) or of a file spec."""
    if str(spec) != EMBEDDED:
        return read_file_spec(spec)
    bench = build_benchmark(p, run_dir, progress=False)
    return read_manifest(bench.manifest_path), {"spec": EMBEDDED, "layout": EMBEDDED_LABEL, "profile": p.name}


def open_dataset(spec, *, size: int, p: Profile, run_dir, policy: str = "center-crop", multiple: int = 8,
                 convert: bool = False) -> ImageDataset:
    """The data set a spec names, read lazily at the detector's input `size` under `policy`."""
    df, description = read_spec(spec, p, run_dir)
    return ImageDataset(df, size, policy, multiple, convert, description)
