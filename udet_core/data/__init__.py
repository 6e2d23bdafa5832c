"""Layer 2, data: image loading with checks, the bundled real photographs, manifests, readers, perturbations."""
from udet_core.core.errors import DataError
from udet_core.data.images import list_images, load_many, load_rgb
from udet_core.data.manifest import COLUMNS, FAKE, REAL, read_manifest, write_manifest
from udet_core.data.readers import (
           read_diffusionforensics,
           read_fakeclue,
           read_real_fake_folders,
)

__all__ = ["DataError", "list_images", "load_many", "load_rgb", "COLUMNS", "FAKE", "REAL", "read_manifest",
           "write_manifest", "read_diffusionforensics", "read_fakeclue", "read_real_fake_folders"]
