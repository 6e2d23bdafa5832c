"""udet: a research workbench for AI-generated-image forensics (CRAFT, UniGenDet and baselines)."""
__version__ = "0.1.0"
