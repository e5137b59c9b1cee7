"""Robust image decoding: every file becomes a fully decoded 8-bit RGB image, or a BadSampleError that says why."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tcl.errors import BadSampleError

# PIL's own default; we check it ourselves from the header instead of relying on the global setting.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


def load_rgb_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Opens, fully decodes (so truncated files fail here, not in a transform) and converts an image to RGB.

    Raises:
        BadSampleError: reason ``missing image``, ``empty image file``, ``corrupt image`` or ``image too large``.
    """
    path = Path(path)
    if not path.is_file():
        raise BadSampleError(f"{path}: image file not found (check data.root / data.image_root)", "missing image")
    if path.stat().st_size == 0:
        raise BadSampleError(f"{path}: image file is empty (0 bytes); re-download it", "empty image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(image, path, max_pixels)
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except BadSampleError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadSampleError(f"{path}: image exceeds the decompression-bomb limit", "image too large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadSampleError(f"{path}: corrupt or truncated image ({error}); re-download or remove it",
                             "corrupt image") from None


def _check_size(image: Image.Image, path: Path, max_pixels: int | None) -> None:
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise BadSampleError(f"{path}: {image.width}x{image.height} pixels exceed data.max_image_pixels = "
                             f"{max_pixels} (decompression-bomb guard); resize the image or raise the limit",
                             "image too large")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: alpha is composited over white, 16/32-bit and float data are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    array = np.asarray(image)
    if image.mode == "F":
        # Float images are taken as intensities in [0, 1] when they fit there, else scaled by their maximum.
        peak = float(array.max()) if array.size and array.max() > 1.0 else 1.0
        scaled = np.clip(array / peak, 0.0, 1.0) * 255.0
    else:
        bits = 16 if image.mode.startswith("I;16") or array.max(initial=0) <= 65535 else 32
        scaled = array.astype(np.float64) / (2**bits - 1) * 255.0
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return gray.convert("RGB")


def as_rgb_image(obj: Any) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, or a numpy array (H×W, H×W×3, H×W×4; uint8, uint16, float 0..1)."""
    if isinstance(obj, (str, os.PathLike)):
        return load_rgb_image(obj)
    if isinstance(obj, Image.Image):
        obj.load()
        return to_rgb(obj)
    if isinstance(obj, np.ndarray):
        return to_rgb(Image.fromarray(_to_uint8(obj)))
    raise BadSampleError(f"cannot use a {type(obj).__name__} as an image (give a path, PIL image or numpy array)",
                         "corrupt image")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise BadSampleError(f"image array of shape {array.shape} is not H×W, H×W×3 or H×W×4", "corrupt image")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.rint(array / 65535.0 * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)
