"""Robust image decoding: every input becomes a fully decoded, upright 8-bit RGB image, or a BadSampleError.

``load_rgb_image`` reads files (datasets); ``as_rgb_image`` also takes encoded bytes, an open PIL image or a numpy
array (inference); ``to_rgb`` converts any PIL mode. Errors name the file, what is wrong and what to do, and carry a
short ``reason`` (``missing image``, ``unreadable image``, ``empty image file``, ``corrupt image``, ``image too
large``, ``unsupported image``) that the skip report counts.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
from PIL import ExifTags, Image, ImageOps

from tcl.errors import BadSampleError

# PIL's own default; we enforce our limit from the header ourselves rather than through the global setting.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# PIL's format plugins report damaged data with any of these (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
_WHITE = (255, 255, 255, 255)
# Tolerance for float arrays that leave [0, 1] only by rounding error.
_FLOAT_SLACK = 1e-3
# (width, height) of a stored image → the smallest (width, height) its user needs, or None for the whole image.
DecodeSize = Callable[[int, int], "tuple[int, int] | None"]


def load_rgb_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                   decode_size: DecodeSize | None = None) -> Image.Image:
    """Reads an image file and returns it fully decoded as upright 8-bit RGB.

    Decoding happens here (``Image.load``), so a truncated file fails now rather than inside a transform.

    Args:
        path: image file.
        max_pixels: largest width × height accepted, checked from the header before decoding; ``None`` turns our
            check off. PIL's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) still applies on top and is
            reported the same way.
        decode_size: (width, height) of the stored image → the smallest size the caller needs, or None for all of
            it: a JPEG is then decoded at the largest reduction (1/2, 1/4, 1/8) that still gives at least that
            (``Image.draft``); other formats decode whole.

    Raises:
        BadSampleError: reason ``missing image``, ``unreadable image``, ``empty image file``, ``corrupt image`` or
            ``image too large``.
    """
    path = Path(path)
    with _open_file(path) as stream:
        return _decode(stream, str(path), max_pixels, decode_size=decode_size)


def as_rgb_image(obj: Any, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, max_side: int | None = None,
                 decode_size: DecodeSize | None = None) -> Image.Image:
    """An upright 8-bit RGB image from a path, encoded bytes, a PIL image or a numpy array.

    Arrays may be H×W, H×W×1, H×W×3 or H×W×4 (alpha is composited over white) and hold uint8, uint16 (scaled by
    255 / 65535), bool, float in [0, 1], or another integer type whose values lie in 0..255.

    Args:
        obj: the image.
        max_pixels: as in ``load_rgb_image``; not applied to arrays, which are decoded already.
        max_side: encoded bytes only: shrink to at most this many pixels a side, decoding JPEGs at a reduced scale
            already (``Image.draft``), so that a huge upload never holds its full-size pixels (a server's choice).
        decode_size: encoded bytes only: as in ``load_rgb_image``.

    Raises:
        BadSampleError: as ``load_rgb_image``, or reason ``unsupported image`` for other types, shapes or ranges.
    """
    if isinstance(obj, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", obj):
        raise BadSampleError(f"{obj}: URLs are not supported; download the image and give its file (or its bytes)",
                             "unsupported image")
    if isinstance(obj, (str, os.PathLike)):
        return load_rgb_image(obj, max_pixels)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(obj), max_pixels, max_side, decode_size)
    if isinstance(obj, Image.Image):
        return _from_pil(obj, max_pixels)
    if isinstance(obj, np.ndarray):
        return to_rgb(Image.fromarray(_array_to_uint8(obj)))
    raise BadSampleError(f"cannot use a {type(obj).__name__} as an image; give a path, encoded bytes, a PIL image "
                         "or a numpy array", "unsupported image")


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts a PIL image of any mode to upright 8-bit RGB.

    * EXIF orientation (phone photos, mostly JPEG) is applied, so the pixels are the way up a viewer shows them.
    * Alpha (RGBA, LA, PA, and P/L/RGB with a ``transparency`` entry) is composited over white, so transparent
      regions become white instead of whatever colour the invisible pixels happen to store.
    * 16-bit integer modes (``I;16``, ``I;16B``, ...) are rescaled by 255 / 65535; mode ``I`` (32-bit signed) is
      rescaled the same way when its values fit in 16 bits (16-bit PNG/TIFF data) and by 255 / (2³¹ - 1)
      otherwise; negative values become 0. Rescaling keeps the whole range, where PIL's own conversion clips at 255.
    * Float (``F``) data in [0, 1] is scaled by 255; data up to 255 is taken as 8-bit intensities (what PIL makes
      when converting 8-bit images to ``F``); larger ranges are divided by their maximum. Negatives and NaN become
      0.
    * Everything else (L, P, 1, CMYK, YCbCr, LAB, HSV, ...) uses PIL's conversion.

    Args:
        image: a loaded PIL image; returned unchanged when it is already upright RGB without transparency.

    Raises:
        BadSampleError: reason ``unsupported image`` when PIL cannot convert the mode.
    """
    image = _upright(image)
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if image.mode.startswith("I"):
        return Image.fromarray(_integer_to_uint8(np.asarray(image), image.mode), mode="L").convert("RGB")
    try:
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            return _over_white(image)
        return image.convert("RGB")
    except ValueError as error:
        raise BadSampleError(f"image mode {image.mode} cannot be converted to RGB ({error}); save the image as RGB "
                             "(for example PNG or JPEG)", "unsupported image") from error


# ---------------------------------------------------------------------------------------------------------------------
# Reading and decoding


def _open_file(path: Path) -> IO[bytes]:
    if not path.exists():
        raise BadSampleError(f"{path}: image file not found", "missing image")
    if not path.is_file():
        raise BadSampleError(f"{path}: is not a file (a folder?); give an image file", "missing image")
    try:
        if path.stat().st_size == 0:
            raise BadSampleError(f"{path}: image file is empty (0 bytes), probably an interrupted download or copy; "
                                 "re-download or re-save it", "empty image file")
        return path.open("rb")
    except OSError as error:
        raise BadSampleError(f"{path}: cannot read the image file ({error}); check its permissions",
                             "unreadable image") from error


def _from_bytes(data: bytes, max_pixels: int | None, max_side: int | None = None,
                decode_size: DecodeSize | None = None) -> Image.Image:
    name = "image bytes"
    if not data:
        raise BadSampleError(f"{name}: empty (0 bytes): there is no image in them", "empty image file")
    image = _decode(io.BytesIO(data), name, max_pixels, max_side, decode_size)
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image


def _decode(stream: IO[bytes], name: str, max_pixels: int | None, max_side: int | None = None,
            decode_size: DecodeSize | None = None) -> Image.Image:
    """Opens (header only), checks the size, then decodes all pixels (at a reduced scale where ``max_side`` or
    ``decode_size`` allows and the format can) and converts them."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice that; we want every bomb it notices to fail the sample.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            _check_pixels(image, name, max_pixels)
            if max_side is not None and max(image.size) > max_side:
                image.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale; others: no-op
            needed = decode_size(*image.size) if decode_size is not None else None
            if needed is not None:
                image.draft("RGB", needed)  # at least ``needed``: PIL picks the largest reduction that gives it
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _too_large(name, f"PIL's decompression-bomb guard refused it ({error})") from error
    except _DECODE_ERRORS as error:
        raise BadSampleError(f"{name}: cannot decode the image, the file is truncated, corrupt or not an image "
                             f"({type(error).__name__}: {error}); re-download or re-save it",
                             "corrupt image") from error
    return to_rgb(image)


def _from_pil(image: Image.Image, max_pixels: int | None) -> Image.Image:
    # Lazily opened images (e.g. from a datasets table) are decoded only now, so they can still be truncated.
    name = str(getattr(image, "filename", "") or "PIL image")
    _check_pixels(image, name, max_pixels)
    try:
        image.load()
    except _DECODE_ERRORS as error:
        raise BadSampleError(f"{name}: cannot decode the image, it is truncated or corrupt ({type(error).__name__}: "
                             f"{error}); re-create it", "corrupt image") from error
    return to_rgb(image)


def _check_pixels(image: Image.Image, name: str, max_pixels: int | None) -> None:
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise _too_large(name, f"{image.width}x{image.height} = {image.width * image.height} pixels exceed "
                               f"max_pixels = {max_pixels}")


def _too_large(name: str, detail: str) -> BadSampleError:
    return BadSampleError(f"{name}: image too large to decode safely: {detail}. Resize the image, or raise "
                          "max_image_pixels if it is genuine", "image too large")


# ---------------------------------------------------------------------------------------------------------------------
# Mode conversion


def _upright(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        # Skipping exif_transpose when there is nothing to do avoids the full copy it makes.
        return ImageOps.exif_transpose(image) if orientation in range(2, 9) else image
    except Exception:  # noqa: BLE001 - broken EXIF metadata (any error type) must not discard decodable pixels
        return image


def _over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")


def _integer_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    if mode.startswith("I;16") or array.max(initial=0) <= 0xFFFF:
        peak = float(0xFFFF)
    else:
        peak = float(2**31 - 1)
    return _scaled_to_uint8(np.clip(array.astype(np.float64), 0.0, None) / peak)


def _float_to_uint8(array: np.ndarray) -> np.ndarray:
    array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=np.finfo(np.float64).max, neginf=0.0)
    top = float(array.max(initial=0.0))
    peak = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else top
    return _scaled_to_uint8(array / peak)


def _scaled_to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats (values outside are clipped) to uint8 with rounding."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """H×W / H×W×3 / H×W×4 uint8 from the accepted array types (see ``as_rgb_image``)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        raise BadSampleError(f"image array of shape {array.shape} is not H×W, H×W×1, H×W×3 or H×W×4",
                             "unsupported image")
    return np.ascontiguousarray(_values_to_uint8(array))


def _values_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return _scaled_to_uint8(array / 65535.0)
    if np.issubdtype(array.dtype, np.floating):
        return _unit_floats_to_uint8(array)
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    raise BadSampleError(f"image array of dtype {array.dtype} (values {array.min()}..{array.max()}) is not supported; "
                         "give uint8, uint16, or floats in [0, 1]", "unsupported image")


def _unit_floats_to_uint8(array: np.ndarray) -> np.ndarray:
    finite = np.nan_to_num(array.astype(np.float64), nan=0.0)
    low, high = float(finite.min()), float(finite.max())
    # Refusing 0..255 floats beats clipping them into an all-white image without a word.
    if low < -_FLOAT_SLACK or high > 1.0 + _FLOAT_SLACK:
        raise BadSampleError(f"float image array has values in [{low:g}, {high:g}], expected [0, 1]; divide 8-bit "
                             "data by 255 (or pass it as uint8)", "unsupported image")
    return _scaled_to_uint8(finite)
