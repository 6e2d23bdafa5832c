"""Progress bars: tqdm.auto interactively; plain-text tqdm when the runner executes notebooks headless
(`UDET_TEXT_PROGRESS=1`), because a widget bar in a papermill kernel is never seen and never updates."""
from __future__ import annotations

import os


def tqdm(*args, **kwargs):
    if os.environ.get("UDET_TEXT_PROGRESS") == "1":
        from tqdm.std import tqdm as text_tqdm
        kwargs.setdefault("mininterval", 5.0)
        return text_tqdm(*args, **kwargs)
    from tqdm.auto import tqdm as auto_tqdm
    return auto_tqdm(*args, **kwargs)
