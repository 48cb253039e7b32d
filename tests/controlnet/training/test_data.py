"""Training data: images decoded as the annotators decode them, and the geometry of each crop."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from controlnet.training.data import Columns, PairDataset, PairTransform


def test_crop_geometry_names_the_pixels_that_were_cut() -> None:
    photo = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    transform = PairTransform(resolution=24, center_crop=False, random_flip=True)
    resized = np.asarray(Image.fromarray(photo).resize((42, 24), Image.Resampling.BILINEAR), dtype=np.float32)
    corners = set()
    for seed in range(12):
        pair = transform.crop(Image.fromarray(photo), Image.fromarray(photo), np.random.default_rng(seed))
        assert pair.original_size == (40, 70)
        top, left = pair.crop_top_left
        pixels = (pair.pixels.numpy().transpose(1, 2, 0) + 1) * 127.5
        flipped = resized[:, ::-1]  # the corner of a flipped crop is named in the flipped image
        matches = [np.abs(image[top : top + 24, left : left + 24] - pixels).max() < 1e-3 for image in (resized, flipped)]
        assert any(matches), (seed, top, left)
        corners.add((left, matches[1]))
    assert len(corners) > 3  # the corners and flips vary, and each is recorded where it happened


def _encoded(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def test_images_decode_with_exif_orientation_and_alpha_over_white() -> None:
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 8:, 3] = 255  # left half fully transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    wide = Image.fromarray(np.full((20, 40, 3), 90, np.uint8))
    features = Features({"image": ImageFeature(), "conditioning_image": ImageFeature(), "text": Value("string")})
    rows = Dataset.from_dict(
        {
            "image": [{"bytes": _encoded(Image.fromarray(rgba), "PNG"), "path": None}, {"bytes": _encoded(wide, "JPEG", exif=exif), "path": None}],
            "conditioning_image": [{"bytes": _encoded(Image.fromarray(rgba), "PNG"), "path": None}, {"bytes": _encoded(wide, "PNG"), "path": None}],
            "text": ["a", "b"],
        },
        features=features,
    )
    dataset = PairDataset(rows, PairTransform(16), Columns(), empty_prompt_prob=0.0, seed=0)
    transparent = dataset[(0, 0)]
    # Alpha composited over white, as annotators.image does: the transparent half is white.
    assert float(transparent["pixel_values"][:, :, :8].min()) == pytest.approx(1.0)
    assert float(transparent["conditioning_pixel_values"][:, :, :8].min()) == pytest.approx(1.0)
    assert float(transparent["pixel_values"][1, :, 8:].max()) == pytest.approx(-1.0)  # opaque red: no green
    rotated = dataset[(0, 1)]
    assert rotated["geometry"][:2] == (40, 20)  # EXIF orientation applied: portrait


def test_a_column_that_is_not_an_image_is_a_clear_error() -> None:
    from datasets import Dataset

    from controlnet.training.data import DataError

    rows = Dataset.from_dict({"image": [3], "conditioning_image": [4], "text": ["a"]})
    with pytest.raises(DataError, match="column 'image' holds int, not an image"):
        PairDataset(rows, PairTransform(16), Columns(), 0.0, 0)[(0, 0)]
