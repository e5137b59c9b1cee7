"""Image transforms as TCL uses them (TCL.md Part B §5.5), on torchvision.transforms.v2.

Pretraining: RandomResizedCrop → colour jitter / grayscale / blur (TCL's SimCLR-style additions) → horizontal flip →
RandomAugment(2, 7) → CLIP normalisation, drawn twice per sample (``TwoViews``). Evaluation: resize and normalise.
All randomness comes from torch's global RNG, so seeding torch reproduces a view exactly.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FILL = (128, 128, 128)


class RandomAugment:
    """TCL's RandomAugment: ``num_ops`` ops drawn with replacement, each applied with probability 0.5 at magnitude
    ``magnitude / max_magnitude``: brightness/sharpness factor 0.1 + 1.8·m (1.36 at m = 7), shear ±0.3·m, translate
    ±magnitude pixels (TCL's value at 10 / 10 is 10 px, scaled linearly), rotate ±30·m degrees, grey fill."""

    OPS = ("identity", "autocontrast", "equalize", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
           "translate_y", "rotate")

    def __init__(self, num_ops: int = 2, magnitude: int = 7, max_magnitude: int = 10):
        self.num_ops = num_ops
        self.level = magnitude / max_magnitude
        self.pixels = 10.0 * self.level

    def __call__(self, image: Image.Image) -> Image.Image:
        for index in torch.randint(len(self.OPS), (self.num_ops,)).tolist():
            if torch.rand(()) < 0.5:
                image = self.apply(self.OPS[index], image)
        return image

    def apply(self, op: str, image: Image.Image) -> Image.Image:
        sign = 1.0 if torch.rand(()) < 0.5 else -1.0
        if op == "identity":
            return image
        if op == "autocontrast":
            return TF.autocontrast(image)
        if op == "equalize":
            return TF.equalize(image)
        if op == "brightness":
            return TF.adjust_brightness(image, 0.1 + 1.8 * self.level)
        if op == "sharpness":
            return TF.adjust_sharpness(image, 0.1 + 1.8 * self.level)
        if op in ("shear_x", "shear_y"):
            degrees = math.degrees(math.atan(sign * 0.3 * self.level))
            shear = [degrees, 0.0] if op == "shear_x" else [0.0, degrees]
            return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, fill=FILL)
        if op in ("translate_x", "translate_y"):
            shift = int(round(sign * self.pixels))
            offset = [shift, 0] if op == "translate_x" else [0, shift]
            return TF.affine(image, angle=0.0, translate=offset, scale=1.0, shear=[0.0, 0.0], fill=FILL)
        return TF.rotate(image, sign * 30.0 * self.level, fill=FILL)


def _to_normalised_tensor() -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)]


def _blur_kernel(image_size: int) -> int:
    """An odd kernel of about 10 % of the image side (SimCLR's choice), at least 3."""
    size = max(3, int(0.1 * image_size))
    return size if size % 2 else size + 1


def _augmented(image_size: int, crop_scale: tuple[float, float], hflip: bool, color_jitter: bool,
               randaugment: bool) -> Callable:
    steps: list = [v2.RandomResizedCrop(image_size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC)]
    if color_jitter:
        steps += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(0.2),
                  v2.RandomApply([v2.GaussianBlur(_blur_kernel(image_size), sigma=(0.1, 2.0))], p=0.5)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(RandomAugment(2, 7))
    return v2.Compose(steps + _to_normalised_tensor())


def pretrain_transform(image_size: int, crop_scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True,
                       color_jitter: bool = True, randaugment: bool = True) -> Callable:
    """TCL's pretraining augmentation (one view; wrap in ``TwoViews`` for two)."""
    return _augmented(image_size, crop_scale, hflip, color_jitter, randaugment)


def vqa_train_transform(image_size: int, crop_scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True,
                        color_jitter: bool = True, randaugment: bool = True) -> Callable:
    """TCL's fine-tuning train augmentation (same structure, milder crops)."""
    return _augmented(image_size, crop_scale, hflip, color_jitter, randaugment)


def test_transform(image_size: int) -> Callable:
    """Bicubic resize to image_size x image_size and CLIP normalisation."""
    return v2.Compose([v2.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC)]
                      + _to_normalised_tensor())


class TwoViews:
    """Two independent draws of a transform."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(image), self.transform(image)
