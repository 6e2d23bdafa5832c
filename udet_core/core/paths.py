"""Where things live: the checkout, the default run and figure folders, the zoo. The one module that reads the
environment for locations and limits (`UDET_ZOO`, `UDET_MAX_IMAGE_PIXELS`)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]   # udet_core/core/paths.py -> the checkout


def default_run_dir(profile: str, data: str = "udet-mini") -> Path:
    """`runs/<profile>` on udet-mini; `runs/<profile>-<data name>-<hash of its resolved path>` on other data."""
    if str(data) == "udet-mini":
        return REPO_ROOT / "runs" / profile
    path = Path(data).resolve()
    return REPO_ROOT / "runs" / f"{profile}-{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:6]}"


def default_figures_dir(profile: str, run_dir, data: str = "udet-mini") -> Path:
    """The repository's `figures/` for the default profile on udet-mini (command 1 regenerates them); inside the run
    dir otherwise (tests, `full`, `paper` and other data never overwrite the committed figures)."""
    return REPO_ROOT / "figures" if profile == "default" and str(data) == "udet-mini" else Path(run_dir) / "figures"


ZOO_DIR = Path(os.environ.get("UDET_ZOO", REPO_ROOT / "data" / "zoo"))   # UDET_ZOO: a zoo kept elsewhere
WORK_DIR = REPO_ROOT / "runs" / "pretrain"
MAX_PIXELS_ENV = "UDET_MAX_IMAGE_PIXELS"   # the image-size limit of `data.images.set_max_pixels`, for child processes


def env_max_pixels() -> int | None:
    """The pixel limit a parent process set (`set_env_max_pixels`), or None."""
    value = os.environ.get(MAX_PIXELS_ENV, "")
    return int(value) if value.isdigit() else None


def set_env_max_pixels(n: int) -> None:
    os.environ[MAX_PIXELS_ENV] = str(int(n))


PROFILE_ENV = "UDET_PROFILE"   # the notebooks' default profile when no runner passes one (e.g. `pytest --nbval-lax`)


def default_profile(default: str = "default") -> str:
    """The profile a notebook runs when nobody passes one: `$UDET_PROFILE` if set, else `default`. `reproduce`
    (papermill) always passes its own."""
    return os.environ.get(PROFILE_ENV) or default
