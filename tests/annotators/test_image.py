"""Decoding, mode conversion and resizing in annotators.image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotators.image import ImageError, decode_image, encode_png, hwc3, load_image, resize_image, resize_short_side


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    from skimage import data

    return data.astronaut()[:48, :64].copy()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_round_trip_exactly(rgb: np.ndarray, fmt: str) -> None:
    extra = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(_encode(Image.fromarray(rgb), fmt, **extra))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_decodes_close_to_source(rgb: np.ndarray) -> None:
    out = decode_image(_encode(Image.fromarray(rgb), "JPEG", quality=95))
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 4


def test_gif_gives_first_frame() -> None:
    red = Image.new("RGB", (8, 6), (255, 0, 0))
    blue = Image.new("RGB", (8, 6), (0, 0, 255))
    data = _encode(red, "GIF", save_all=True, append_images=[blue])
    out = decode_image(data)
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])


def test_exif_orientation_is_applied(rgb: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(_encode(Image.fromarray(rgb), "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))


def test_gray_and_palette_modes_become_rgb(rgb: np.ndarray) -> None:
    gray = Image.fromarray(rgb).convert("L")
    out = decode_image(_encode(gray, "PNG"))
    np.testing.assert_array_equal(out, np.repeat(np.asarray(gray)[:, :, None], 3, axis=2))
    palette = Image.fromarray(rgb).convert("P")
    np.testing.assert_array_equal(decode_image(_encode(palette, "PNG")), np.asarray(palette.convert("RGB")))


def test_alpha_is_composited_over_white_like_hwc3() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[0, 64, 128, 255]] * 4
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(out, hwc3(rgba))
    # Transparent pixels are white; opaque ones keep their colour; 128/255 blends (float32, truncated).
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 3], [200, 0, 0])
    alpha = np.float32(128) / np.float32(255)
    assert out[0, 2, 1] == np.uint8(np.float32(255) * (np.float32(1) - alpha))
    la = Image.fromarray(rgba[..., 3], "L").convert("LA")
    assert decode_image(_encode(la, "PNG")).shape == (4, 4, 3)


def test_cmyk_and_16_bit() -> None:
    cmyk = Image.new("CMYK", (5, 3), (0, 255, 255, 0))  # pure red in CMYK
    np.testing.assert_array_equal(decode_image(_encode(cmyk, "TIFF"))[0, 0], [255, 0, 0])
    ramp = np.array([[0, 257 * 128, 65535]], np.uint16)
    sixteen = Image.fromarray(ramp)
    assert sixteen.mode.startswith("I;16")
    out = decode_image(_encode(sixteen, "PNG"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty file"),
        (b"definitely not an image", "not an image"),
    ],
)
def test_bad_bytes_raise_image_error_with_source(payload: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason) as err:
        decode_image(payload, source="bad/file.jpg")
    assert err.value.source == "bad/file.jpg"
    assert str(err.value).startswith("bad/file.jpg: ")


def test_truncated_image_is_reported(rgb: np.ndarray) -> None:
    data = _encode(Image.fromarray(rgb), "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2], source="half.jpg")


def test_decompression_bomb_is_refused_before_decoding(rgb: np.ndarray) -> None:
    with pytest.raises(ImageError, match="too large"):
        decode_image(_encode(Image.fromarray(rgb), "PNG"), max_pixels=100)


def test_unreadable_path_names_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageError, match="cannot read file") as err:
        load_image(missing)
    assert str(missing) in str(err.value)


def test_resize_image_rounds_to_64_and_picks_interpolation(rgb: np.ndarray) -> None:
    assert resize_image(rgb, 512).shape == (512, 704, 3)  # 48x64 -> k=10.67 -> 512 x 682.7 -> 704
    assert resize_image(rgb, 30).shape == (64, 64, 3)  # rounds to the nearest multiple, never 0 here


def test_resize_short_side_keeps_aspect(rgb: np.ndarray) -> None:
    out = resize_short_side(rgb, 96)
    assert out.shape == (96, 128, 3)
    assert resize_short_side(rgb, 48) is rgb


def test_encode_png_is_lossless_and_grayscale_stores_one_channel(rgb: np.ndarray) -> None:
    assert np.array_equal(decode_image(encode_png(rgb)), rgb)
    gray = hwc3(rgb[:, :, 1].copy())
    data = encode_png(gray, grayscale=True)
    assert Image.open(io.BytesIO(data)).mode == "L"
    np.testing.assert_array_equal(decode_image(data), gray)


def test_resized_size_matches_resize_image() -> None:
    from annotators.image import resized_size

    for height, width in ((80, 96), (512, 576), (300, 1000), (1000, 37), (64, 64), (48, 64)):
        for resolution in (30, 64, 512, 768):
            expected = resize_image(np.zeros((height, width, 3), np.uint8), resolution).shape[:2]
            assert resized_size(height, width, resolution) == expected
