"""Layer 3, models: tiny-from-config or pretrained-from-path backbones, generators, samplers."""

# Loading bars of diffusers/transformers clutter headless logs; the workbench shows its own progress.
from diffusers.utils import logging as _dlog  # noqa: E402
from transformers.utils import logging as _tlog  # noqa: E402

_dlog.disable_progress_bar()
_tlog.disable_progress_bar()
