"""TCL's image transforms: shapes, determinism under torch seeding, RandomAugment's ops and magnitudes, switches."""

import numpy as np
import pytest
import torch
from PIL import Image

# Imported as a module: a bare ``test_transform`` name would be collected by pytest as a test.
from tcl.data import transforms as T


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _constant(*rgb: int, size: int = 64) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.uint8)[:, None, None].expand(3, size, size)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


# ---------------------------------------------------------------------------------------------------------------------
# Pipelines


@pytest.mark.parametrize("size", [64, 256, 384])
@pytest.mark.parametrize("factory", [T.pretrain_transform, T.vqa_train_transform, T.test_transform])
@pytest.mark.parametrize("input_size", [(320, 200), (90, 500), (64, 64)])
def test_output_shape_and_dtype(factory, size, input_size):
    torch.manual_seed(0)
    out = factory(size)(_noise(*input_size))
    assert type(out) is torch.Tensor
    assert out.shape == (3, size, size) and out.dtype == torch.uint8 and out.is_contiguous()


def test_two_draws_differ_and_reseeding_reproduces_them():
    # The pretraining datasets' two views are two calls of the chain (tcl.data.builders.pretrain_transforms).
    transform = T.pretrain_transform(64)
    image = _noise(120, 90)
    torch.manual_seed(7)
    first, second = transform(image), transform(image)
    assert first.shape == second.shape == (3, 64, 64)
    assert not torch.equal(first, second)
    torch.manual_seed(7)
    again_first, again_second = transform(image), transform(image)
    assert torch.equal(first, again_first) and torch.equal(second, again_second)


def test_only_torch_rng_matters():
    transform = T.pretrain_transform(64)
    image = _noise(100, 80)
    torch.manual_seed(3)
    np.random.seed(0)
    first = transform(image)
    torch.manual_seed(3)
    np.random.seed(1)
    assert torch.equal(first, transform(image))


def test_test_transform_deterministic_and_exact_on_constant():
    transform = T.test_transform(96)
    image = _noise(150, 100)
    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(1)
    assert torch.equal(first, transform(image))
    constant = T.test_transform(64)(Image.new("RGB", (130, 70), (200, 100, 50)))
    assert torch.equal(constant, _constant(200, 100, 50))


def test_everything_off_is_deterministic():
    transform = T.pretrain_transform(64, crop_scale=(1.0, 1.0), hflip=False, color_jitter=False, randaugment=False)
    constant = Image.new("RGB", (100, 100), (90, 90, 90))
    outputs = []
    for seed in range(5):
        torch.manual_seed(seed)
        outputs.append(transform(constant))
    assert all(torch.equal(outputs[0], out) for out in outputs)
    assert torch.equal(outputs[0], _constant(90, 90, 90))
    # A square image with the full-area crop is simply resized, whatever the seed.
    image = _noise(100, 100)
    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(1)
    assert torch.equal(first, transform(image))


@pytest.mark.parametrize("switch", ["hflip", "color_jitter", "randaugment"])
def test_each_switch_adds_randomness(switch):
    off = {"hflip": False, "color_jitter": False, "randaugment": False}
    transform = T.pretrain_transform(64, crop_scale=(1.0, 1.0), **{**off, switch: True})
    image = _noise(100, 100)
    outputs = []
    for seed in range(8):
        torch.manual_seed(seed)
        outputs.append(transform(image))
    assert any(not torch.equal(outputs[0], out) for out in outputs[1:])


def test_switches_remove_steps():
    def step_types(transform):
        return [type(step).__name__ for step in transform.transforms]

    full = step_types(T.pretrain_transform(64))
    assert full[:6] == ["RandomResizedCrop", "RandomApply", "RandomGrayscale", "RandomApply", "RandomHorizontalFlip",
                        "RandomAugment"]
    assert full[-1] == "ToPixels"
    bare = step_types(T.vqa_train_transform(64, hflip=False, color_jitter=False, randaugment=False))
    assert bare == ["RandomResizedCrop", "ToPixels"]


@pytest.mark.parametrize("input_size", [(64, 64), (320, 200), (90, 500), (40, 41)])
@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.8, 1.0), (1.0, 1.0)])
def test_lean_crop_draws_and_resamples_as_torchvision(input_size, scale):
    from torchvision.transforms import InterpolationMode, v2

    reference = v2.RandomResizedCrop(64, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True)
    lean = T.RandomResizedCrop(64, scale=scale)
    image = _noise(*input_size, seed=input_size[0])
    for seed in range(10):
        torch.manual_seed(seed)
        expected = _pixels(reference(image))
        next_after_reference = torch.rand(3)
        torch.manual_seed(seed)
        got = lean(image)
        assert got.size == (64, 64) and np.array_equal(_pixels(got), expected)
        # The same number of draws: the steps after it in a chain see the same RNG state.
        assert torch.equal(torch.rand(3), next_after_reference)


@pytest.mark.parametrize("image", [_noise(64, 64), _noise(37, 90, seed=3), Image.new("RGB", (5, 7), (0, 255, 128))])
def test_lean_tensor_conversion_is_torchvisions_bit_for_bit(image):
    from torchvision.transforms import v2

    reference = v2.Compose([v2.ToImage(), v2.ToPureTensor()])
    got = T.ToPixels()(image)
    assert got.dtype == torch.uint8 and got.is_contiguous() and got.shape == (3, image.height, image.width)
    assert torch.equal(got, reference(image))


def test_crop_scales_and_blur():
    pretrain, vqa = T.pretrain_transform(256).transforms, T.vqa_train_transform(256).transforms
    assert pretrain[0].scale == (0.2, 1.0) and vqa[0].scale == (0.5, 1.0)
    blur = pretrain[3].transforms[0]
    assert isinstance(blur, T.GaussianBlur) and blur.sigma == (0.1, 2.0)


def _scene(width: int = 96, height: int = 72) -> Image.Image:
    """A smooth colour gradient with a few flat shapes: edges and colours, as a photograph has."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.uint8)
    pixels[10:30, 12:40] = (200, 30, 40)
    pixels[40:60, 50:90] = (20, 160, 220)
    return Image.fromarray(pixels)


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(_pixels(a) - _pixels(b)).mean())


def test_the_blur_is_pils_gaussian_with_a_sigma_drawn_from_torch():
    """OpenCV's true Gaussian of the sigma PIL's GaussianBlur(radius=sigma) approximates with box blurs."""
    from PIL import ImageFilter

    image = _scene()
    torch.manual_seed(4)
    sigma = torch.empty(1).uniform_(0.1, 2.0).item()
    expected = image.filter(ImageFilter.GaussianBlur(radius=sigma))
    torch.manual_seed(4)
    blurred = T.GaussianBlur()(image)
    assert _mean_difference(blurred, expected) < 1.0 < _mean_difference(image, expected)


def test_the_hue_shift_is_torchvisions():
    from torchvision.transforms.v2 import functional as TF

    image = _scene()
    for shift in (-0.1, -0.03, 0.05, 0.1, 0.5):
        ours, reference = T.shift_hue(image, shift), TF.adjust_hue(image, shift)
        assert _mean_difference(ours, reference) < 1.5 < _mean_difference(image, reference)


def test_colour_jitter_draws_and_changes_as_torchvisions():
    from torchvision.transforms import ColorJitter

    image = _scene()
    for seed in range(5):
        torch.manual_seed(seed)
        ours = T.ColorJitter(0.4, 0.4, 0.4, 0.1)(image)
        after_ours = torch.rand(1)
        torch.manual_seed(seed)
        reference = ColorJitter(0.4, 0.4, 0.4, 0.1)(image)
        assert torch.equal(torch.rand(1), after_ours)  # the same draws from torch's RNG
        assert _mean_difference(ours, reference) < 2.0


def test_sharpness_is_pils():
    from PIL import ImageEnhance

    image = _noise(40, 30)
    for factor in (0.1, 1.36, 1.9):
        expected = _pixels(ImageEnhance.Sharpness(image).enhance(factor))
        assert np.abs(_pixels(T.sharpen(image, factor)) - expected).max() <= 1


@pytest.mark.parametrize("bad", [{"image_size": 0}, {"image_size": 64, "crop_scale": (0.0, 1.0)},
                                 {"image_size": 64, "crop_scale": (0.9, 0.5)}])
def test_invalid_arguments(bad):
    with pytest.raises(ValueError):
        T.pretrain_transform(**bad)


# ---------------------------------------------------------------------------------------------------------------------
# RandomAugment


@pytest.mark.parametrize("op", T.RandomAugment.OPS)
@pytest.mark.parametrize("size", [(64, 64), (97, 41)])
def test_every_op_keeps_size_and_mode(op, size):
    torch.manual_seed(0)
    out = T.RandomAugment().apply(op, _noise(*size))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == size


def test_tcl_magnitudes():
    augment = T.RandomAugment(2, 7)
    assert augment.enhance_factor == pytest.approx(1.36)
    assert augment.shear_factor == pytest.approx(0.21)
    assert augment.translate_pixels == pytest.approx(7.0)
    assert augment.rotate_degrees == pytest.approx(21.0)
    full = T.RandomAugment(2, 10)
    assert (full.enhance_factor, full.translate_pixels, full.rotate_degrees) == pytest.approx((1.9, 10.0, 30.0))


def test_brightness_factor():
    out = T.RandomAugment().apply("brightness", Image.new("RGB", (8, 8), (100, 50, 200)))
    assert out.getpixel((4, 4)) == (136, 68, 255)


@pytest.mark.parametrize("op", ["translate_x", "translate_y"])
def test_translate_shifts_seven_pixels_with_grey_fill(op):
    image = Image.new("RGB", (40, 30), (10, 20, 30))
    for seed in range(4):
        torch.manual_seed(seed)
        out = _pixels(T.RandomAugment().apply(op, image))
        line = out[15] if op == "translate_x" else out[:, 20]
        grey = (line == 128).all(axis=1)
        assert grey.sum() == 7 and (grey[:7].all() or grey[-7:].all())


def test_shear_is_anchored_at_the_top_left_like_tcl():
    image = Image.new("RGB", (100, 100), (10, 20, 30))
    for seed in range(4):
        torch.manual_seed(seed)
        out = _pixels(T.RandomAugment().apply("shear_x", image))
        assert (out[0, 1:-1] == (10, 20, 30)).all()  # top row stays in place
        grey_at_bottom = (out[99] == 128).all(axis=1).sum()
        assert abs(grey_at_bottom - 0.21 * 99) <= 1.5


def test_rotate_fills_corners_with_grey():
    torch.manual_seed(0)
    out = _pixels(T.RandomAugment().apply("rotate", Image.new("RGB", (100, 100), (10, 20, 30))))
    assert (out[50, 50] == (10, 20, 30)).all()
    assert all((out[y, x] == 128).all() for y, x in [(0, 0), (0, 99), (99, 0), (99, 99)])


def test_random_augment_draws_from_torch():
    augment = T.RandomAugment(4, 7)
    image = _noise(64, 64)
    torch.manual_seed(11)
    first = _pixels(augment(image))
    torch.manual_seed(11)
    assert (first == _pixels(augment(image))).all()
    outputs = []
    for seed in range(10):
        torch.manual_seed(seed)
        outputs.append(_pixels(augment(image)))
    assert any((outputs[0] != out).any() for out in outputs[1:])


def test_random_augment_zero_ops_is_identity():
    image = _noise(20, 20)
    assert T.RandomAugment(0)(image) is image


def test_random_augment_rejects_bad_arguments():
    with pytest.raises(ValueError):
        T.RandomAugment(2, 7, max_magnitude=0)


def test_large_jpegs_decode_at_the_scale_the_crops_need(tmp_path):
    """At 256 px the smallest crop of a 1600 x 1200 photograph (a fifth of its area, ratio 3:4) has 537 pixels a
    side: half the resolution still gives it 268, so the JPEG decodes at 800 x 600; a 640 x 480 one decodes whole,
    and so does any image at 384 px."""
    from tcl.data.images import as_rgb_image, load_rgb_image

    big = tmp_path / "big.jpg"
    _scene(1600, 1200).save(big, quality=90)
    chain = T.pretrain_transform(256)
    decode_size = T.chains_decode_size(chain, T.pretrain_transform(256, hflip=False))
    assert decode_size(1600, 1200) == (764, 573) and decode_size(640, 480) is None
    assert T.chains_decode_size(T.pretrain_transform(384))(1600, 1200) is None
    assert T.chains_decode_size(chain, T.test_transform(256)) is None  # a chain without a random crop: whole
    image = load_rgb_image(big, decode_size=decode_size)
    assert image.size == (800, 600) and as_rgb_image(big.read_bytes(), decode_size=decode_size).size == (800, 600)
    assert load_rgb_image(big).size == (1600, 1200)
    crop = chain.transforms[0]
    for seed in range(50):  # every crop drawn on the reduced image still has the output's resolution
        torch.manual_seed(seed)
        _, _, height, width = crop.draw(image)
        assert min(height, width) >= 256
    torch.manual_seed(0)
    assert chain(image).shape == (3, 256, 256)
