"""Image decoding on real files: every damaged input becomes a BadSampleError naming the file, every mode RGB."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tcl.data.images import DEFAULT_MAX_IMAGE_PIXELS, as_rgb_image, load_rgb_image, to_rgb
from tcl.errors import BadSampleError, DataError


def _gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None, None]
    return Image.fromarray(np.broadcast_to((x + y) / 2, (height, width, 3)).astype(np.uint8))


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height but holds no pixel data: decoding it would fail."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def _assert_bad(path, reason: str, **kwargs) -> BadSampleError:
    with pytest.raises(BadSampleError) as caught:
        load_rgb_image(path, **kwargs)
    assert caught.value.reason == reason
    assert str(path) in str(caught.value)
    return caught.value


# ---------------------------------------------------------------------------------------------------------------------
# Bad files


def test_missing_file(tmp_path):
    error = _assert_bad(tmp_path / "nope.jpg", "missing image")
    assert isinstance(error, DataError)
    assert "not found" in str(error) and "data." not in str(error)  # a user's own file: no training settings
    from tcl.data.bad_samples import load_with_policy
    from tcl.errors import BadSampleError

    def load(_index):
        raise error

    with pytest.raises(BadSampleError, match="check data.root / data.image_root"):  # a dataset's sample: they help
        load_with_policy(load, 0, 1, "error")


def test_directory_is_missing_image(tmp_path):
    _assert_bad(tmp_path, "missing image")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert "empty" in str(_assert_bad(path, "empty image file"))


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    _gradient(256, 256).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    error = _assert_bad(path, "corrupt image")
    assert "truncated" in str(error) and "re-download" in str(error)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    _assert_bad(path, "corrupt image")


def test_huge_header_rejected_before_decoding(tmp_path):
    # The file has no pixel data, so only a check made from the header can give "image too large" here.
    path = tmp_path / "huge.png"
    _png_header_only(path, 5000, 5000)
    error = _assert_bad(path, "image too large", max_pixels=1_000_000)
    assert "5000x5000" in str(error) and "max_image_pixels" in str(error)
    _assert_bad(path, "corrupt image", max_pixels=None)


def test_decompression_bomb_from_pil_becomes_too_large(tmp_path):
    path = tmp_path / "bomb.png"
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 10
    _png_header_only(path, side, side)
    # Our check is off: PIL's own guard refuses it while opening, and that is reported the same way.
    error = _assert_bad(path, "image too large", max_pixels=None)
    assert "decompression-bomb" in str(error)


def test_size_limit_is_inclusive(tmp_path):
    path = tmp_path / "small.png"
    _gradient(20, 10).save(path)
    assert load_rgb_image(path, max_pixels=200).size == (20, 10)
    _assert_bad(path, "image too large", max_pixels=199)


# ---------------------------------------------------------------------------------------------------------------------
# Modes


def test_rgb_jpeg_roundtrip(tmp_path):
    path = tmp_path / "rgb.jpg"
    _gradient().save(path)
    image = load_rgb_image(str(path))
    assert image.mode == "RGB" and image.size == (64, 48)
    # Decoded already: usable although the file is gone.
    path.unlink()
    assert np.asarray(image).shape == (48, 64, 3)


def test_grayscale(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (8, 6), 77).save(path)
    image = load_rgb_image(path)
    assert image.mode == "RGB" and image.getpixel((3, 3)) == (77, 77, 77)


def test_rgba_transparent_pixels_become_white(tmp_path):
    array = np.zeros((10, 10, 4), np.uint8)
    array[..., :3] = (0, 200, 0)
    array[:, 5:, 3] = 255  # right half opaque green, left half fully transparent (stored colour: green)
    array[0, 0] = (0, 0, 0, 128)
    path = tmp_path / "rgba.png"
    Image.fromarray(array, mode="RGBA").save(path)
    rgb = np.asarray(load_rgb_image(path))
    assert (rgb[1:, :5] == 255).all()
    assert (rgb[:, 5:] == (0, 200, 0)).all()
    assert abs(int(rgb[0, 0, 0]) - 127) <= 1  # half-transparent black over white is mid grey


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (6, 6), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (3, 0, 6, 6))
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    rgb = np.asarray(load_rgb_image(path))
    assert (rgb[:, :3] == 255).all()  # transparent red → white
    assert (rgb[:, 3:] == (0, 0, 255)).all()


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "p.gif"
    Image.new("RGB", (6, 6), (10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    image = load_rgb_image(path)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (10, 20, 30)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (16, 16), (200, 40, 40)).convert("CMYK").save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    red, green, blue = load_rgb_image(path).getpixel((8, 8))
    assert red > 150 and green < 90 and blue < 90


def test_sixteen_bit_grayscale_png(tmp_path):
    array = np.zeros((4, 4), np.uint16)
    array[0, 0], array[0, 1], array[0, 2] = 65535, 32768, 0
    path = tmp_path / "depth16.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(load_rgb_image(path))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert abs(int(rgb[0, 1, 0]) - 128) <= 1
    assert rgb[0, 2, 0] == 0


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_integer_modes_rescaled_not_clipped(mode):
    array = np.array([[0, 1000, 32768, 65535]], np.uint16)
    if mode == "I;16B":
        image = Image.frombytes(mode, (4, 1), array.astype(">u2").tobytes())
    else:
        image = Image.fromarray(array.astype(np.int32) if mode == "I" else array)
    assert image.mode == mode
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 4, 128, 255]


def test_thirty_two_bit_integer_mode():
    image = Image.fromarray(np.array([[0, 2**30, 2**31 - 1, -5]], np.int32), mode="I")
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255, 0]


@pytest.mark.parametrize(("values", "expected"), [([0.0, 0.5, 1.0], [0, 128, 255]),
                                                  ([0.0, 127.0, 255.0], [0, 127, 255]),
                                                  ([0.0, 500.0, 1000.0], [0, 128, 255]),
                                                  ([-1.0, np.nan, 0.25], [0, 0, 64])])
def test_float_mode(values, expected):
    image = Image.fromarray(np.array([values], np.float32), mode="F")
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == expected


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV",
                                  "I;16", "I", "F"])
def test_every_mode_becomes_rgb(mode):
    image = _gradient(12, 8).convert(mode) if mode not in ("PA",) else Image.new("PA", (12, 8))
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (12, 8)


def test_rgb_passes_through_unchanged():
    image = _gradient()
    assert to_rgb(image) is image


def test_exif_orientation_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    _gradient(40, 20).save(path, exif=exif)
    assert Image.open(path).size == (40, 20)
    assert load_rgb_image(path).size == (20, 40)


# ---------------------------------------------------------------------------------------------------------------------
# In-memory inputs


def test_numpy_uint8_inputs():
    gray = np.full((5, 7), 9, np.uint8)
    assert as_rgb_image(gray).getpixel((0, 0)) == (9, 9, 9)
    assert as_rgb_image(gray[..., None]).size == (7, 5)
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 2] = 200
    assert as_rgb_image(rgb).getpixel((6, 4)) == (0, 0, 200)
    rgba = np.zeros((5, 7, 4), np.uint8)
    assert as_rgb_image(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_numpy_uint16_and_float_inputs():
    assert as_rgb_image(np.full((3, 3), 65535, np.uint16)).getpixel((1, 1)) == (255, 255, 255)
    assert as_rgb_image(np.full((3, 3), 32768, np.uint16)).getpixel((1, 1))[0] == 128
    floats = np.zeros((3, 3, 3), np.float32)
    floats[..., 0] = 1.0
    floats[..., 1] = 0.5
    assert as_rgb_image(floats).getpixel((0, 0)) == (255, 128, 0)
    # A non-contiguous view (channels-first data transposed) works too.
    chw = np.zeros((3, 4, 6), np.float64)
    assert as_rgb_image(chw.transpose(1, 2, 0)).size == (6, 4)


def test_numpy_other_integer_types_in_byte_range():
    assert as_rgb_image(np.array([[0, 255]], np.int64)).getpixel((1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("array", [np.zeros((2, 3, 2), np.uint8), np.zeros((2, 3, 3, 1), np.uint8),
                                   np.zeros((0, 3), np.uint8), np.full((2, 2), 255.0),
                                   np.array([[0, 1000]], np.int32)])
def test_numpy_rejects_bad_arrays(array):
    with pytest.raises(BadSampleError) as caught:
        as_rgb_image(array)
    assert caught.value.reason == "unsupported image"


def test_pil_and_bytes_inputs(tmp_path):
    path = tmp_path / "a.png"
    _gradient().convert("RGBA").save(path)
    assert as_rgb_image(Image.open(path)).mode == "RGB"
    assert as_rgb_image(path).size == (64, 48)
    buffer = io.BytesIO()
    _gradient().save(buffer, format="JPEG")
    assert as_rgb_image(buffer.getvalue()).size == (64, 48)
    with pytest.raises(BadSampleError, match="image bytes") as caught:
        as_rgb_image(buffer.getvalue()[:200])
    assert caught.value.reason == "corrupt image"


def test_lazily_opened_truncated_pil_image(tmp_path):
    path = tmp_path / "cut.jpg"
    _gradient(256, 256).save(path)
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(BadSampleError) as caught:
        as_rgb_image(Image.open(path))
    assert caught.value.reason == "corrupt image" and str(path) in str(caught.value)


def test_unsupported_object():
    with pytest.raises(BadSampleError, match="list") as caught:
        as_rgb_image([[1, 2]])
    assert caught.value.reason == "unsupported image"


def test_default_limit_matches_pil():
    assert DEFAULT_MAX_IMAGE_PIXELS == 89_478_485
