"""Post-processing perturbations for robustness sweeps (UniGenDet appendix Tables B/C). uint8 RGB in, uint8 RGB out."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through JPEG at `quality` (1-100), 4:2:0 chroma subsampling as most encoders do."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def center_crop(a: np.ndarray, ratio: float, resize_back: bool = True) -> np.ndarray:
    """Keep the central `ratio` of each side; by default resize back to the input size (bicubic)."""
    h, w = a.shape[:2]
    ch, cw = max(1, round(h * ratio)), max(1, round(w * ratio))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = a[top:top + ch, left:left + cw]
    return resize(out, (w, h)) if resize_back else out


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` pixels (0 = identity)."""
    if sigma <= 0:
        return a.copy()
    return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius=sigma)))


def resize(a: np.ndarray, size) -> np.ndarray:
    """Resize to `size` = (width, height) or a square side, bicubic."""
    if isinstance(size, int):
        size = (size, size)
    return np.asarray(Image.fromarray(a).resize(tuple(size), Image.Resampling.BICUBIC))


def apply(a: np.ndarray, jpeg_quality: int | None = None, crop_ratio: float = 1.0, blur_sigma: float = 0.0):
    """The sweep's order: crop (and resize back), then blur, then JPEG."""
    if crop_ratio < 1.0:
        a = center_crop(a, crop_ratio)
    if blur_sigma > 0:
        a = gaussian_blur(a, blur_sigma)
    if jpeg_quality is not None:
        a = jpeg(a, jpeg_quality)
    return a
