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
    jpeg_reduction,
    resize_decoded,
    resize_image,
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


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((3024, 4032), (512, 704), 4),  # 756 x 1008 covers it; 1/8 (378 x 504) does not
        ((4096, 4096), (512, 512), 8),  # exactly 512 at 1/8
        ((4095, 4096), (512, 512), 8),  # ceil(4095 / 8) = 512
        ((4088, 4096), (512, 512), 4),  # 511 rows at 1/8: one short
        ((1000, 1000), (512, 512), 1),  # 500 at 1/2: no reduction
        ((512, 768), (512, 768), 1),
    ],
)
def test_jpeg_reduction_is_the_largest_scale_that_covers_the_target(size: tuple[int, int], target: tuple[int, int], expected: int) -> None:
    assert jpeg_reduction(*size, target) == expected


def test_reduced_decode_is_libjpegs_scaled_decode_of_the_full_image(astronaut: np.ndarray) -> None:
    photo = np.ascontiguousarray(np.tile(astronaut, (3, 4, 1))[:1500, :2000])  # target at 128: 128 x 192 (rounded to 64)
    data = _jpeg(photo, quality=90)
    decoded = decode_image_info(data, reduce_for=128)
    assert (decoded.reduction, decoded.size, decoded.pixels.shape) == (8, (1500, 2000), (188, 250, 3))
    reference = Image.open(io.BytesIO(data))
    reference.draft("RGB", (250, 187))  # the same libjpeg scaled decode through Pillow (whose rule divides with floor)
    np.testing.assert_array_equal(decoded.pixels, np.asarray(reference.convert("RGB")))
    assert resize_decoded(decoded, 128).shape == (128, 192, 3)
    full = decode_image_info(data)
    assert full.reduction == 1 and full.size == (1500, 2000)
    np.testing.assert_array_equal(resize_decoded(full, 128), resize_image(full.pixels, 128))


@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_decode_follows_exif_orientation(astronaut: np.ndarray, orientation: int) -> None:
    data = _jpeg(np.ascontiguousarray(np.tile(astronaut, (2, 3, 1))[:1024, :1536]), orientation)
    decoded = decode_image_info(data, reduce_for=256)
    expected = (1024, 1536) if orientation == 1 else (1536, 1024)
    assert decoded.size == expected and decoded.reduction == 4
    assert decoded.pixels.shape[:2] == (expected[0] // 4, expected[1] // 4)
    assert resize_decoded(decoded, 256).shape[:2] == resize_image(_pillow_reference(data), 256).shape[:2]


def test_images_too_small_to_reduce_and_pngs_decode_at_full_size(astronaut: np.ndarray) -> None:
    assert decode_image_info(_jpeg(astronaut), reduce_for=512).reduction == 1  # 512: the target itself
    buffer = io.BytesIO()
    Image.fromarray(np.tile(astronaut, (4, 4, 1))).save(buffer, "PNG")
    png = decode_image_info(buffer.getvalue(), reduce_for=256)
    assert png.reduction == 1 and png.pixels.shape == (2048, 2048, 3)
