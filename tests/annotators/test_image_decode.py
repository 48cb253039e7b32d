"""The fast decoding paths in annotators.image give exactly what Pillow gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from annotators.image import (
    ImageError,
    decode_image,
    decode_image_info,
    encode_png,
    hwc3,
)


def _jpeg(pixels: np.ndarray, orientation: int = 1, **save: object) -> bytes:
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", exif=exif, **save)
    return buffer.getvalue()


def _pillow_reference(data: bytes) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_fast_path_matches_pillow_for_each_orientation(astronaut: np.ndarray, orientation: int) -> None:
    data = _jpeg(astronaut[:301, :203], orientation, quality=90)
    decoded = decode_image_info(data)
    np.testing.assert_array_equal(decoded.pixels, _pillow_reference(data))
    assert decoded.format == "JPEG"
    assert decoded.plain is (orientation == 1)


@pytest.mark.parametrize("save", [{"quality": 75}, {"quality": 95, "subsampling": 0}, {"progressive": True}])
def test_jpeg_fast_path_matches_pillow_for_encodings(photos: list[np.ndarray], save: dict) -> None:
    for photo in photos:
        data = _jpeg(photo[1:, 3:], **save)
        np.testing.assert_array_equal(decode_image(data), _pillow_reference(data))


def test_gray_jpeg_decodes_to_three_equal_channels(astronaut: np.ndarray) -> None:
    data = _jpeg(astronaut[:, :, 1])
    np.testing.assert_array_equal(decode_image(data), _pillow_reference(data))


def test_truncated_jpeg_is_refused(astronaut: np.ndarray) -> None:
    data = _jpeg(astronaut)
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[: len(data) // 2], source="half.jpg")


def test_rgba_png_is_not_plain() -> None:
    rgba = np.zeros((4, 5, 4), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, "PNG")
    decoded = decode_image_info(buffer.getvalue())
    assert not decoded.plain
    np.testing.assert_array_equal(decoded.pixels, np.full((4, 5, 3), 255, np.uint8))


def test_hwc3_gray_repeats_the_channel() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(hwc3(gray), np.repeat(gray[:, :, None], 3, axis=2))


def test_encode_png_round_trips(astronaut: np.ndarray) -> None:
    back = np.asarray(Image.open(io.BytesIO(encode_png(astronaut))))
    np.testing.assert_array_equal(back, astronaut)
    gray = np.asarray(Image.open(io.BytesIO(encode_png(astronaut, grayscale=True))))
    np.testing.assert_array_equal(gray, astronaut[:, :, 0])
