"""A synthetic DiffusionForensics-style folder tree (real photo views and upsampled fakes at any size): the input
of the streaming and real-architecture benchmarks, written without any model."""
from __future__ import annotations

import numpy as np

from udet_core.core.io import atomic_write_bytes
from udet_core.core.progress import tqdm
from udet_core.data.sources import PHOTOS

TREE_FAMILIES = {"nearest-x2": (2, "NEAREST"), "bicubic-x4": (4, "BICUBIC")}


def tree_image(rng: np.random.Generator, views: list, size: int) -> np.ndarray:
    """A real image of the synthetic tree: a random square crop (half to all of the shorter side) of a bundled
    photograph, resampled to size x size (Lanczos), flipped at random."""
    from PIL import Image
    img = views[int(rng.integers(len(views)))]
    h, w = img.shape[:2]
    side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    out = np.asarray(Image.fromarray(img[top:top + side, left:left + side]).resize((size, size), Image.LANCZOS))
    return out[:, ::-1] if rng.random() < 0.5 else out


def upsampled_fake(real: np.ndarray, factor: int, resample: str) -> np.ndarray:
    """A fake of the synthetic tree: the real image downscaled by `factor` and upsampled back with `resample`
    (nearest: blocky periodic traces, as from a generator's upsampling; bicubic: band-limited, smooth)."""
    from PIL import Image
    h, w = real.shape[:2]
    small = Image.fromarray(real).resize((w // factor, h // factor), Image.BOX)
    return np.asarray(small.resize((w, h), getattr(Image, resample)))


def synthetic_tree(root, n_train: int = 2000, n_test: int = 8000, size: int = 512, seed: int = 0,
                   progress: bool = True) -> dict:
    """Write a `0_real/1_fake` tree of PNGs, `{root}/{train,test}/{family}/{0_real,1_fake}/{i:06d}.png`: half
    reals (`tree_image`), half fakes spread over `TREE_FAMILIES` (`upsampled_fake` of other reals). A synthetic
    stand-in for a lab's 512 px data set, to measure streaming at scale; train and test draw from disjoint photos."""
    import io
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    names = sorted(PHOTOS)
    photos = {"train": names[::2], "test": names[1::2]}
    rng = np.random.default_rng(seed)
    counts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        views = [v for name in photos[split] for v in PHOTOS[name].load()]
        for i in tqdm(range(n), desc=f"synthetic tree {split}", disable=not progress):
            real = tree_image(rng, views, size)
            if i % 2 == 0:
                family, cls, img = "real", "0_real", real
            else:
                family = list(TREE_FAMILIES)[(i // 2) % len(TREE_FAMILIES)]
                img = upsampled_fake(real, *TREE_FAMILIES[family])
                cls = "1_fake"
            path = root / split / family / cls / f"{i:06d}.png"
            if not path.exists():   # a rerun completes an interrupted tree (same seed, same images)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG", compress_level=1)
                atomic_write_bytes(path, buf.getvalue())
            counts[(split, family)] = counts.get((split, family), 0) + 1
    return {f"{s}/{f}": c for (s, f), c in counts.items()}
