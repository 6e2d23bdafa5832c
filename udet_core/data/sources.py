"""Real images of udet-mini: colour photographs that ship inside scikit-image, scikit-learn and matplotlib.

Photos are grouped by *source* (the two motorcycle views are one source: they show the same scene), and each
source belongs to exactly one split, so a real test crop never shares a photo with a training crop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image


def _skimage(name: str) -> Callable[[], list[np.ndarray]]:
    def load():
        import skimage.data
        return [getattr(skimage.data, name)()]
    return load


def _motorcycle() -> list[np.ndarray]:
    import skimage.data
    left, right, _ = skimage.data.stereo_motorcycle()
    return [left, right]


def _sklearn(filename: str) -> Callable[[], list[np.ndarray]]:
    def load():
        from sklearn.datasets import load_sample_image
        return [load_sample_image(filename)]
    return load


def _matplotlib(filename: str) -> Callable[[], list[np.ndarray]]:
    def load():
        from matplotlib import cbook
        with cbook.get_sample_data(filename) as f:
            return [np.asarray(Image.open(f).convert("RGB"))]
    return load


@dataclass(frozen=True)
class Photo:
    name: str
    subject: str        # noun phrase used in captions
    origin: str         # package that ships it
    licence: str
    load: Callable[[], list[np.ndarray]]
    content: str = "scene"   # content domain for cross-domain tests: "scene" (everyday photos) or "science"


PHOTOS: dict[str, Photo] = {p.name: p for p in [
    Photo("astronaut", "an astronaut in a spacesuit", "scikit-image", "public domain (NASA)", _skimage("astronaut")),
    Photo("chelsea", "a tabby cat", "scikit-image", "CC0 (Stefan van der Walt)", _skimage("chelsea")),
    Photo("coffee", "a cup of coffee on a saucer", "scikit-image", "CC0 (Rachel Michetti)", _skimage("coffee")),
    Photo("rocket", "a rocket on a launch pad", "scikit-image", "public domain (SpaceX)", _skimage("rocket")),
    Photo("motorcycle", "a motorcycle in a workshop", "scikit-image",
          "Middlebury 2014 stereo benchmark (Scharstein et al.), bundled with scikit-image", _motorcycle),
    Photo("hubble_deep_field", "a field of distant galaxies", "scikit-image", "public domain (NASA)",
          _skimage("hubble_deep_field"), "science"),
    Photo("immunohistochemistry", "stained tissue under a microscope", "scikit-image",
          "no known copyright restrictions", _skimage("immunohistochemistry"), "science"),
    Photo("retina", "the back of a human eye", "scikit-image", "CC0 1.0", _skimage("retina"), "science"),
    Photo("china", "a temple roof among trees", "scikit-learn", "CC BY 2.0 (danielbuechele, Flickr)",
          _sklearn("china.jpg")),
    Photo("flower", "a pink flower with a bee", "scikit-learn", "CC BY 2.0 (vultilion, Flickr)",
          _sklearn("flower.jpg")),
    Photo("grace_hopper", "a woman in a naval uniform", "matplotlib",
          "public domain (official U.S. Navy photograph of Rear Admiral Grace Hopper)", _matplotlib("grace_hopper.jpg")),
]}


def content_domain(source: str) -> str | None:
    """The content domain of a source photo ('scene' or 'science'); None for unconditional samples (no source)."""
    return PHOTOS[source].content if source in PHOTOS else None


SCALE_WORDS = {0.12: "close-up", 0.25: "detail", 0.5: "medium", 1.0: "wide"}


def scale_word(scale: float) -> str:
    return SCALE_WORDS.get(scale, f"{scale:.2f}-scale")


def caption_for(source: str, scale: float) -> str:
    """The (template) caption of a crop: 'a close-up photo of a tabby cat'."""
    return f"a {scale_word(scale)} photo of {PHOTOS[source].subject}"


def check_split_photos(split_photos: dict) -> None:
    """Every named photo exists and no photo is in two splits."""
    seen: dict[str, str] = {}
    for split, names in split_photos.items():
        for n in names:
            if n not in PHOTOS:
                raise ValueError(f"unknown photo {n!r} in split {split!r}; known: {sorted(PHOTOS)}")
            if n in seen:
                raise ValueError(f"photo {n!r} is in both {seen[n]!r} and {split!r}: splits must not share photos")
            seen[n] = split


def random_crops(names, n: int, resolution: int, scales, rng: np.random.Generator):
    """`n` square crops at random positions and scales, round-robin over the photos `names`, resized.

    Returns (uint8 array (n, R, R, 3), list of dicts with source, view, scale, box).
    """
    views = [(name, v, img) for name in names for v, img in enumerate(PHOTOS[name].load())]
    out = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    meta = []
    for i in range(n):
        name, view, img = views[i % len(views)]
        h, w = img.shape[:2]
        scale = float(scales[rng.integers(len(scales))])
        side = max(resolution, int(round(scale * min(h, w))))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(img[top:top + side, left:left + side])
        out[i] = np.asarray(crop.resize((resolution, resolution), Image.Resampling.LANCZOS))
        meta.append({"source": name, "view": view, "scale": scale, "box": (top, left, side)})
    return out, meta
