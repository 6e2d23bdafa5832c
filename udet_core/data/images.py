"""Image loading with explicit checks: every bad input becomes a `DataError` that names the file.

Forensic detectors read exactly the pixel statistics that silent conversions change (alpha compositing,
palette expansion, 16->8 bit rounding), so by default such images are refused with a message saying why;
`load_rgb(..., convert=True)` converts them on purpose (a library call; the command line never converts).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from udet_core.core.errors import DataError
from udet_core.core.io import atomic_write_bytes
from udet_core.core.paths import env_max_pixels, set_env_max_pixels
from udet_core.core.progress import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WebP"}


def _signature(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(8)
    return next((kind for sig, kind in _SIGNATURES.items() if head.startswith(sig)), None)


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def load_rgb(path, min_size: int = 0, convert: bool = False) -> np.ndarray:
    """Load an 8-bit RGB image as a uint8 array (H, W, 3), or raise `DataError` naming the file and problem."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file does not exist")
    if path.is_dir():
        raise DataError(path, "is a folder, not an image file")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():   # above the pixel limit: a bad file, not a warning (`set_max_pixels`)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            im.load()
        with im:
            mode, fmt = im.mode, im.format
            has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info)
            if mode == "RGB" and (_png_bit_depth(path) or 8) > 8:
                mode = "RGB;16"  # Pillow reads 48-bit PNGs as 8-bit RGB: refuse the silent truncation
            if mode != "RGB" and not convert:
                raise DataError(path, _mode_problem(mode, fmt))
            rgb = _to_rgb(im, mode, has_alpha)
    except DataError:
        raise
    except UnidentifiedImageError:
        kind = _signature(path)
        if kind:
            raise DataError(path, f"corrupt or truncated image data (starts like a {kind} file but cannot be "
                                  "decoded)") from None
        raise DataError(path, "not an image (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(path, f"more pixels than the limit of {Image.MAX_IMAGE_PIXELS} (a decompression bomb or a "
                              f"very large image: raise the limit with --max-pixels): {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"corrupt or truncated image data ({e})") from None
    except Exception as e:   # any other decoder failure is this file's problem, never the run's
        raise DataError(path, f"cannot be decoded ({type(e).__name__}: {e})") from None
    h, w = rgb.shape[:2]
    if min(h, w) < min_size:
        raise DataError(path, f"image is {w}x{h}, smaller than the required {min_size}x{min_size}")
    return rgb


def set_max_pixels(n: int | None) -> None:
    """The largest image (in pixels) `load_rgb` decodes; larger files are bad files (PIL's decompression-bomb guard;
    None: PIL's default, about 89 million). DataLoader workers inherit it (fork) or read it back (`core.paths.env_max_pixels`)."""
    if n is not None:
        if n <= 0:
            raise DataError("--max-pixels", f"must be a positive number of pixels, got {n}")
        Image.MAX_IMAGE_PIXELS = int(n)
        set_env_max_pixels(int(n))


if env_max_pixels() is not None:   # a limit set by the parent process (`set_max_pixels`)
    Image.MAX_IMAGE_PIXELS = env_max_pixels()


def _mode_problem(mode: str, fmt: str | None) -> str:
    what = {
        "RGBA": "has an alpha channel (RGBA)", "LA": "is grayscale with alpha (LA)", "PA": "is a palette image with alpha",
        "P": "is a palette (indexed-colour) image", "L": "is grayscale (L), not RGB", "1": "is bilevel (1-bit)",
        "I;16": "is 16-bit grayscale", "I;16B": "is 16-bit grayscale", "I": "is 32-bit integer grayscale",
        "F": "is floating-point grayscale", "CMYK": "is CMYK", "YCbCr": "is YCbCr", "RGB;16": "is 16-bit per channel RGB",
    }.get(mode, f"has unsupported mode {mode}")
    return f"{fmt or 'image'} {what}; expected 8-bit RGB (convert it to 8-bit RGB PNG first)"


def _to_rgb(im: Image.Image, mode: str, has_alpha: bool) -> np.ndarray:
    if mode in ("I;16", "I;16B", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if has_alpha:  # composite onto white
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def walk_folders(root) -> list[Path]:
    """`root` and every folder below it, following symbolic links to folders, each real folder once (a link back
    up the tree is not followed again); sorted."""
    seen, out, stack = set(), [], [Path(root)]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
        out.append(d)
        with os.scandir(d) as it:
            stack += [Path(e.path) for e in it if e.is_dir(follow_symlinks=True)]
    return sorted(out)


def scan_folder(folder) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files below `folder`, [(path, why)] of every other file there), following symbolic links
    (`walk_folders`); sorted. Hidden files (a leading '.') are neither."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "folder does not exist")
    images, others = [], []
    for d in walk_folders(folder):
        for f in sorted(d.iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                images.append(f)
            else:
                others.append((str(f), f"not scored: unsupported file type {f.suffix or '(no extension)'!r}; "
                                       f"supported: {', '.join(sorted(IMAGE_SUFFIXES))} (convert it to PNG)"))
    return sorted(images), sorted(others)


def list_images(folder) -> list[Path]:
    """All image files below `folder` (recursively, following symbolic links, sorted); `DataError` if the folder is
    missing or has none (`scan_folder` also lists the other files)."""
    files, _ = scan_folder(folder)
    if not files:
        raise DataError(folder, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in this folder")
    return files


def load_many(paths, min_size: int = 0, convert: bool = False, progress: bool = False):
    """Load many images, skipping bad ones. Returns (arrays, kept_indices, problems[(path, problem)])."""
    arrays, kept, problems = [], [], []
    for i, p in enumerate(tqdm(list(paths), desc="load images", disable=not progress)):
        try:
            arrays.append(load_rgb(p, min_size=min_size, convert=convert))
            kept.append(i)
        except DataError as e:
            problems.append((e.path, e.problem))
    return arrays, kept, problems


def to_tensor(arrays, size: int | None = None):
    """uint8 HxWx3 arrays -> float tensor (N, 3, H, W) in [-1, 1]; centre-crop + resize to `size` if given."""
    import torch
    out = []
    for a in arrays:
        if size is not None and a.shape[:2] != (size, size):
            a = center_crop_resize(a, size)
        out.append(torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1))
    return torch.stack(out).float().div(127.5).sub(1.0)


def to_uint8(x) -> np.ndarray:
    """Float tensor (N, 3, H, W) in [-1, 1] -> uint8 arrays (N, H, W, 3)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def center_crop_resize(a: np.ndarray, size: int) -> np.ndarray:
    """Largest centred square, resized to size x size (Lanczos)."""
    h, w = a.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    im = Image.fromarray(a[top:top + s, left:left + s])
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS))


def save_png(a: np.ndarray, path) -> Path:
    """Save a uint8 RGB array as PNG atomically."""
    import io

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
