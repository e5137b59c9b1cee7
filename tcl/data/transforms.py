"""Image transforms as TCL uses them, on torchvision.transforms.v2.

Pretraining: RandomResizedCrop → colour jitter / grayscale / Gaussian blur (TCL's SimCLR-style additions to
ALBEF) → horizontal flip → RandomAugment(2, 7) → uint8 tensor, drawn twice per sample by the pretraining datasets
(the online view and the momentum encoders' view: ``tcl.data.builders.pretrain_transforms``). Fine-tuning uses the
same chain with milder crops; evaluation only resizes. The CLIP normalisation happens on the model's device, in the
image encoder (``tcl.models.vision.PixelVisionTransformer``): workers, pinned memory and the copy to the GPU move
uint8 pixels, a quarter of float32's bytes.

The crop and the conversion to a tensor, which every chain has, are our own lean steps: they draw the same random
numbers and compute the same pixels as torchvision's ``RandomResizedCrop`` and ``ToImage``, without v2's per-call
dispatch, which cost three quarters of a view (docs/BENCHMARKS.md, "The loading path"). The hue shift, the blur and
RandomAugment's warps and sharpening run in OpenCV (as TCL's own RandomAugment does), five to eight times faster
than through PIL, with the same draws and, to within a grey level or two, the same pixels.

Every random draw comes from torch's global RNG (torchvision v2 and ``RandomAugment`` alike), so seeding torch
reproduces a view exactly, and DataLoader workers, which torch seeds per worker, draw independent views.
"""

from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision import transforms as v1
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from tcl.data.images import DecodeSize

# TCL's RandomAugment constants (dataset/randaugment.py): grey fill, and the translation in pixels at full magnitude.
FILL = [128.0, 128.0, 128.0]
TRANSLATE_PIXELS_AT_MAX = 10.0
# TCL blurs with PIL's GaussianBlur(radius=sigma), sigma in [0.1, 2.0] (``RandomGaussianBlur``).
BLUR_SIGMA = (0.1, 2.0)


class RandomAugment:
    """TCL's RandomAugment (ALBEF's RandAugment variant) on PIL images, using torch's RNG.

    ``num_ops`` operations are drawn uniformly with replacement from ``OPS``; each is applied with probability 0.5 at
    level ``m = magnitude / max_magnitude`` (0.7 by default), with TCL's scaling:

    * brightness, sharpness: enhancement factor ``0.1 + 1.8 m`` (1.36), always above 1 for m > 0.5 as in TCL;
    * shear x / y: factor ``±0.3 m`` (±0.21), anchored at the top-left corner like TCL's ``cv2.warpAffine``;
    * translate x / y: ``±10 m`` pixels (±7), independent of the image size;
    * rotate: ``±30 m`` degrees (±21) about the centre;

    the sign drawn at random, uncovered areas filled with grey (128, 128, 128) and geometric ops interpolated
    bilinearly (cv2's default in TCL). Autocontrast and equalize work per channel, as TCL's copies of PIL's do.

    Args:
        num_ops: operations drawn per image.
        magnitude: strength on the scale 0..``max_magnitude``.
        max_magnitude: the magnitude that means full strength.
    """

    OPS = ("identity", "autocontrast", "equalize", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
           "translate_y", "rotate")

    def __init__(self, num_ops: int = 2, magnitude: float = 7, max_magnitude: float = 10):
        if num_ops < 0 or max_magnitude <= 0 or magnitude < 0:
            raise ValueError(f"RandomAugment needs num_ops >= 0, magnitude >= 0 and max_magnitude > 0, got "
                             f"{num_ops}, {magnitude}, {max_magnitude}")
        level = magnitude / max_magnitude
        self.num_ops = num_ops
        self.enhance_factor = 0.1 + 1.8 * level
        self.shear_factor = 0.3 * level
        self.translate_pixels = TRANSLATE_PIXELS_AT_MAX * level
        self.rotate_degrees = 30.0 * level

    def __call__(self, image: Image.Image) -> Image.Image:
        for index in torch.randint(len(self.OPS), (self.num_ops,)).tolist():
            if torch.rand(()).item() < 0.5:
                image = self.apply(self.OPS[index], image)
        return image

    def apply(self, op: str, image: Image.Image) -> Image.Image:
        """Applies one operation (a name from ``OPS``) at this instance's magnitude; signs are drawn at random."""
        return getattr(self, f"_{op}")(image)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_ops={self.num_ops}, enhance_factor={self.enhance_factor:.2f}, "
                f"shear_factor={self.shear_factor:.2f}, translate_pixels={self.translate_pixels:.1f}, "
                f"rotate_degrees={self.rotate_degrees:.1f})")

    @staticmethod
    def _identity(image: Image.Image) -> Image.Image:
        return image

    @staticmethod
    def _autocontrast(image: Image.Image) -> Image.Image:
        return TF.autocontrast(image)

    @staticmethod
    def _equalize(image: Image.Image) -> Image.Image:
        return TF.equalize(image)

    def _brightness(self, image: Image.Image) -> Image.Image:
        return TF.adjust_brightness(image, self.enhance_factor)

    def _sharpness(self, image: Image.Image) -> Image.Image:
        return sharpen(image, self.enhance_factor)

    def _shear_x(self, image: Image.Image) -> Image.Image:
        return self._shear(image, axis=0)

    def _shear_y(self, image: Image.Image) -> Image.Image:
        return self._shear(image, axis=1)

    def _translate_x(self, image: Image.Image) -> Image.Image:
        return self._translate(image, axis=0)

    def _translate_y(self, image: Image.Image) -> Image.Image:
        return self._translate(image, axis=1)

    def _rotate(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        # OpenCV's angle is counter-clockwise, as PIL's and torchvision's.
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), _random_sign() * self.rotate_degrees, 1.0)
        return _warp(image, matrix)

    def _shear(self, image: Image.Image, axis: int) -> Image.Image:
        # x' = x + f y (or y' = y + f x): anchored at the top-left corner, as TCL's cv2.warpAffine.
        matrix = np.eye(2, 3, dtype=np.float32)
        matrix[axis, 1 - axis] = _random_sign() * self.shear_factor
        return _warp(image, matrix)

    def _translate(self, image: Image.Image, axis: int) -> Image.Image:
        matrix = np.eye(2, 3, dtype=np.float32)
        matrix[axis, 2] = _random_sign() * self.translate_pixels
        return _warp(image, matrix)


def _warp(image: Image.Image, matrix: np.ndarray) -> Image.Image:
    """An affine warp through OpenCV (``cv2.warpAffine``: bilinear, uncovered pixels grey), as TCL's RandomAugment
    does it; torchvision's on a PIL image took 5 to 10 times as long."""
    pixels = np.asarray(image)
    warped = cv2.warpAffine(pixels, matrix, (pixels.shape[1], pixels.shape[0]), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(FILL))
    return Image.fromarray(warped)


def sharpen(image: Image.Image, factor: float) -> Image.Image:
    """PIL's ``ImageEnhance.Sharpness``: a blend of the image with its smoothed copy (PIL's SMOOTH kernel), the
    one-pixel border kept, computed with OpenCV's ``filter2D`` (six times faster than PIL's on a view)."""
    pixels = np.asarray(image).astype(np.float32)
    smooth = cv2.filter2D(pixels, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    blended = pixels.copy()
    blended[1:-1, 1:-1] = smooth[1:-1, 1:-1] + factor * (pixels[1:-1, 1:-1] - smooth[1:-1, 1:-1])
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


# PIL's ImageFilter.SMOOTH, the "degenerate" image of its sharpness enhancement.
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13


def _random_sign() -> float:
    return 1.0 if torch.rand(()).item() < 0.5 else -1.0


class GaussianBlur:
    """TCL's blur (PIL's ``GaussianBlur(radius=sigma)``, sigma drawn uniformly from ``sigma``) computed as a true
    Gaussian of that standard deviation with OpenCV (edges replicated), sigma drawn from torch's RNG as torchvision's
    ``GaussianBlur`` draws it. PIL's is an extended box blur approximating the same Gaussian, seven times slower on a
    view; torchvision's own needs a fixed kernel (25 px at 256) and ran 40 times slower (docs/BENCHMARKS.md)."""

    def __init__(self, sigma: tuple[float, float] = BLUR_SIGMA):
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        sigma = torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item()
        blurred = cv2.GaussianBlur(np.asarray(image), (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
        return Image.fromarray(blurred)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class ColorJitter:
    """torchvision's ``ColorJitter`` (its random order and factors, drawn from torch's RNG by
    ``transforms.ColorJitter.get_params``; brightness, contrast and saturation by torchvision's functions), with the
    hue shifted in OpenCV's 8-bit HSV, whose hue spans 0-255 as PIL's does: torchvision's PIL path converts to HSV
    and back through PIL, eight times slower, the largest cost of a view.

    Args:
        brightness, contrast, saturation: the factor's spread around 1 (drawn in [max(0, 1 - x), 1 + x]).
        hue: the shift's bound, as a fraction of the hue circle (drawn in [-hue, hue], at most 0.5).
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float):
        reference = v1.ColorJitter(brightness, contrast, saturation, hue)  # checks and turns bounds into ranges
        self.ranges = (reference.brightness, reference.contrast, reference.saturation, reference.hue)

    def __call__(self, image: Image.Image) -> Image.Image:
        order, brightness, contrast, saturation, hue = v1.ColorJitter.get_params(*self.ranges)
        for step in order.tolist():
            if step == 0 and brightness is not None:
                image = TF.adjust_brightness(image, brightness)
            elif step == 1 and contrast is not None:
                image = TF.adjust_contrast(image, contrast)
            elif step == 2 and saturation is not None:
                image = TF.adjust_saturation(image, saturation)
            elif step == 3 and hue is not None:
                image = shift_hue(image, hue)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ranges={self.ranges})"


def shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """The image's hue turned by ``shift`` (a fraction of the circle, in [-0.5, 0.5]) in 8-bit HSV, as
    torchvision's ``adjust_hue`` of a PIL image does it, through OpenCV's conversions."""
    hsv = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] += np.uint8(int(shift * 255) % 256)  # wraps around the circle, as uint8 arithmetic does
    return Image.fromarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL))


def pretrain_transform(image_size: int, crop_scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True,
                       color_jitter: bool = True, randaugment: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """TCL's pretraining augmentation, one view (the datasets draw it once per view TCL contrasts).

    Args:
        image_size: side of the square output.
        crop_scale: area range of RandomResizedCrop, as a fraction of the image.
        hflip: random horizontal flip.
        color_jitter: colour jitter (p 0.8), random grayscale (p 0.2) and Gaussian blur (p 0.5), switched together.
        randaugment: ``RandomAugment(2, 7)``.

    Returns:
        A callable from an RGB PIL image to a uint8 tensor of shape (3, image_size, image_size).
    """
    return _augmented(image_size, crop_scale, hflip, color_jitter, randaugment)


def vqa_train_transform(image_size: int, crop_scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True,
                        color_jitter: bool = True, randaugment: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """TCL's fine-tuning train augmentation: the pretraining chain with milder crops (arguments as there)."""
    return _augmented(image_size, crop_scale, hflip, color_jitter, randaugment)


def test_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Evaluation transform: bicubic resize to image_size × image_size (no crop), uint8 tensor."""
    _check_size(image_size)
    resize = v2.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    return v2.Compose([resize, ToPixels()])


class RandomResizedCrop:
    """A random crop resized to ``size`` × ``size`` with PIL's bicubic filter, drawn as torchvision's
    ``RandomResizedCrop`` draws it (area fraction in ``scale``, log-uniform aspect ratio in ``ratio``, ten tries, then
    a central crop), from torch's global RNG.

    Args:
        size: side of the square output.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).
    """

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.apply(image, self.draw(image))

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The smallest (width, height) of a width × height image at which every crop this draws still holds at
        least ``size`` pixels a side (the smallest crop: the least area at the most elongated ratio), or None when
        that is more than half the image: what a JPEG may be decoded at (``load_rgb_image``'s ``decode_size``). The
        crop is then drawn on the reduced image with the same random numbers, so only its resolution changes."""
        elongation = min(self.ratio[0], 1 / self.ratio[1], 1.0)
        smallest_side = math.sqrt(self.scale[0] * width * height * elongation)
        factor = self.size / max(smallest_side, 1e-9)
        if factor > 0.5:  # JPEG decodes at 1/2, 1/4 or 1/8 only
            return None
        return math.ceil(width * factor), math.ceil(height * factor)

    def draw(self, image: Image.Image) -> tuple[int, int, int, int]:
        """The crop (top, left, height, width) in the image's pixels."""
        return tuple(v1.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio)))

    def apply(self, image: Image.Image, crop: tuple[int, int, int, int]) -> Image.Image:
        top, left, height, width = crop
        image = image.crop((left, top, left + width, top + height))
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), resample=Image.Resampling.BICUBIC)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio})"


def chains_decode_size(*chains: Callable) -> DecodeSize | None:
    """A ``decode_size`` for images that each of ``chains`` (augmentation chains) will view: the largest size any
    of their first steps needs; None (decode whole) unless every chain starts with our ``RandomResizedCrop``."""
    crops = [getattr(chain, "transforms", [None])[0] for chain in chains]
    if not crops or not all(isinstance(crop, RandomResizedCrop) for crop in crops):
        return None

    def decode_size(width: int, height: int) -> tuple[int, int] | None:
        sizes = [crop.decode_size(width, height) for crop in crops]
        if any(size is None for size in sizes):
            return None
        return max(w for w, _ in sizes), max(h for _, h in sizes)

    return decode_size


# A crop of an image in its pixels, as our RandomResizedCrop draws it: (top, left, height, width).
Crop = tuple[int, int, int, int]
# A box in fractions of a view: (centre x, centre y, width, height).
ViewBox = tuple[float, float, float, float]


def box_in_crop(box: list[float], crop: Crop) -> ViewBox | None:
    """A COCO box [x, y, width, height] in the image's pixels as (centre x, centre y, width, height) in fractions of
    the crop (top, left, height, width), clipped to it; None when nothing of the box is left inside."""
    top, left, height, width = crop
    x0, y0 = max(box[0] - left, 0.0), max(box[1] - top, 0.0)
    x1, y1 = min(box[0] + box[2] - left, width), min(box[1] + box[3] - top, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)


class ViewWithCrop:
    """A view of an augmentation chain together with the crop (top, left, height, width) it was taken from, so that
    boxes can follow it (``box_in_crop``). The chain's only geometric step must be its first, our
    ``RandomResizedCrop``: flips and RandomAugment's shears and rotations would move objects where a box does not
    follow, so they are refused. Draws the same random numbers as the chain, so the view is the chain's."""

    def __init__(self, transform: v2.Compose):
        steps = list(getattr(transform, "transforms", []))
        if not steps or not isinstance(steps[0], RandomResizedCrop):
            raise ValueError(f"ViewWithCrop needs a chain that starts with RandomResizedCrop, got {transform!r}")
        moving = [step for step in steps[1:] if isinstance(step, (v2.RandomHorizontalFlip, RandomAugment))]
        if moving:
            raise ValueError(f"boxes cannot follow {moving[0]!r}; turn off data.hflip and data.randaugment")
        self.crop, self.rest = steps[0], v2.Compose(steps[1:])

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, Crop]:
        crop = self.crop.draw(image)
        return self.rest(self.crop.apply(image, crop)), crop

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.crop!r}, {self.rest!r})"


class ToPixels:
    """An RGB PIL image as a uint8 (3, H, W) tensor, channels first in memory too (batches then stack with plain
    copies): torchvision's ``ToImage`` without its dispatch."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return pixels.permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _augmented(image_size: int, crop_scale: tuple[float, float], hflip: bool, color_jitter: bool,
               randaugment: bool) -> v2.Compose:
    _check_size(image_size)
    low, high = crop_scale
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
    steps: list[Callable] = [RandomResizedCrop(image_size, scale=(low, high))]
    if color_jitter:
        steps += _colour_steps()
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if randaugment:
        steps.append(RandomAugment(2, 7))
    return v2.Compose([*steps, ToPixels()])


def _colour_steps() -> list[Callable]:
    return [v2.RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2),
            v2.RandomApply([GaussianBlur(BLUR_SIGMA)], p=0.5)]


def _check_size(image_size: int) -> None:
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
