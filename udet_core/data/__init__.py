"""Data: image loading with checks, the bundled real photographs, manifests, readers, perturbations."""
from .images import DataError, list_images, load_many, load_rgb
from .manifest import COLUMNS, FAKE, REAL, read_manifest, write_manifest
from .readers import read_diffusionforensics, read_fakeclue, read_real_fake_folders

__all__ = ["DataError", "list_images", "load_many", "load_rgb", "COLUMNS", "FAKE", "REAL", "read_manifest",
           "write_manifest", "read_diffusionforensics", "read_fakeclue", "read_real_fake_folders"]
