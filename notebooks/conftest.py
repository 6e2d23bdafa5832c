"""`python -m pytest --nbval-lax notebooks/`: nbval runs every notebook, on the tiny profile unless UDET_PROFILE says
otherwise (a notebook's `profile = None` reads it), with its kernel importing udet_core from this checkout."""
import os
from pathlib import Path

os.environ.setdefault("UDET_PROFILE", "tiny")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent.parent),
                                                       os.environ.get("PYTHONPATH")) if p)
