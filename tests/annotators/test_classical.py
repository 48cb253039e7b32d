"""Weight-free annotators against their reference formulas on real photographs, and hand-computed
expectations on tiny inputs. The reference expressions are written out here independently of the
package's code, in the reference's own order of operations."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import annotators


def run(name: str, images: list[np.ndarray], **params) -> list[np.ndarray]:
    return annotators.create(name, **params)(images)


def gray3(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[:, :, None], 3, axis=2)


def test_threshold_reference(photos) -> None:
    for image, out in zip(photos, run("threshold", photos)):
        expected = np.zeros_like(image)
        expected[np.min(image, axis=2) > 127] = 255
        np.testing.assert_array_equal(out, expected)


def test_threshold_tiny() -> None:
    image = np.array([[[128, 200, 255], [127, 255, 255]]], np.uint8)
    (out,) = run("threshold", [image])
    np.testing.assert_array_equal(out[:, :, 0], [[255, 0]])


def test_invert_reference(photos) -> None:
    for image, out in zip(photos, run("invert", photos)):
        np.testing.assert_array_equal(out, 255 - image)


def test_binary_otsu_reference(photos) -> None:
    for image, out in zip(photos, run("binary", photos)):
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        _, expected = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
        np.testing.assert_array_equal(out, gray3(expected))


def test_binary_fixed_level_tiny() -> None:
    image = gray3(np.array([[10, 100, 101, 250]], np.uint8))
    (out,) = run("binary", [image], threshold=100)
    np.testing.assert_array_equal(out[:, :, 0], [[255, 255, 0, 0]])  # at or below the level -> white


def test_blur_gaussian_reference(photos) -> None:
    for image, out in zip(photos, run("blur_gaussian", photos)):
        np.testing.assert_array_equal(out, cv2.GaussianBlur(image, (0, 0), 9.0))


def test_scribble_xdog_reference(photos) -> None:
    for image, out in zip(photos, run("scribble_xdog", photos)):
        g1 = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.5)
        g2 = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 5.0)
        dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
        expected = np.zeros_like(image)
        expected[2 * (255 - dog.astype(np.int32)) > 32] = 255
        np.testing.assert_array_equal(out, expected)
        assert 0.01 < (out > 0).mean() < 0.5  # a real photograph gives some strokes, not all


def test_lineart_standard_reference(photos) -> None:
    for image, out in zip(photos, run("lineart_standard", photos)):
        x = image.astype(np.float32)
        g = cv2.GaussianBlur(x, (0, 0), 6.0)
        intensity = np.min(g - x, axis=2).clip(0, 255)
        intensity /= max(16, np.median(intensity[intensity > 8]))
        intensity *= 127
        np.testing.assert_array_equal(out, gray3(intensity.clip(0, 255).astype(np.uint8)))


def test_lineart_standard_blank_image_is_black() -> None:
    (out,) = run("lineart_standard", [np.full((32, 40, 3), 200, np.uint8)])
    assert not out.any()


def test_color_grid_reference(photos) -> None:
    for image, out in zip(photos, run("color_grid", photos)):
        h, w = image.shape[:2]
        small = cv2.resize(image, (w // 64, h // 64), interpolation=cv2.INTER_CUBIC)
        np.testing.assert_array_equal(out, cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST))


def test_color_grid_cells_are_flat() -> None:
    image = np.zeros((128, 128, 3), np.uint8)
    image[:, 64:] = (10, 200, 30)
    (out,) = run("color_grid", [image])
    assert len(np.unique(out[:64, :64].reshape(-1, 3), axis=0)) == 1
    np.testing.assert_array_equal(out[100, 100], [10, 200, 30])


def test_tile_resample_reference(photos) -> None:
    for image, out in zip(photos, run("tile_resample", photos, down_sampling_rate=2.0)):
        h, w = image.shape[:2]
        small = cv2.resize(image, (int(w / 2.0), int(h / 2.0)), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(out, cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    for image, out in zip(photos, run("tile_resample", photos)):
        np.testing.assert_array_equal(out, image)  # the reference default (1.0) leaves the image as is


def test_canny_on_photos_is_binary_edges(photos) -> None:
    for image, out in zip(photos, run("canny", photos)):
        np.testing.assert_array_equal(out, gray3(cv2.Canny(image, 100, 200)))
        assert set(np.unique(out)) <= {0, 255}


def test_shuffle_reference_flow(photos) -> None:
    """The map is the image remapped through two smooth noise fields spanning the whole frame."""
    from annotators.base import image_seed

    for image, out in zip(photos, run("shuffle", photos)):
        h, w = image.shape[:2]
        rng = np.random.default_rng(image_seed(image, 0))
        fields = []
        for scale in (w - 1, h - 1):
            noise = rng.uniform(0, 1, size=(h // 256 + 2, w // 256 + 2))
            noise = cv2.resize(noise, (w + 512, h + 512), interpolation=cv2.INTER_CUBIC)[256 : 256 + h, 256 : 256 + w]
            noise -= noise.min()
            noise /= noise.max()
            fields.append((noise * float(scale)).astype(np.float32))
        np.testing.assert_array_equal(out, cv2.remap(image, fields[0], fields[1], cv2.INTER_LINEAR))


def test_shuffle_is_seeded_per_image() -> None:
    from skimage import data

    a, b = data.astronaut(), data.coffee()[:512, :512].copy()
    first = run("shuffle", [a, b])
    assert np.array_equal(run("shuffle", [b, a])[1], first[0])  # position in the batch does not matter
    assert not np.array_equal(run("shuffle", [a], seed=1)[0], first[0])  # the seed does
    constant = np.full((40, 60, 3), 77, np.uint8)
    np.testing.assert_array_equal(run("shuffle", [constant])[0], constant)  # only moves pixels


def _rectangle() -> np.ndarray:
    image = np.zeros((120, 160, 3), np.uint8)
    cv2.rectangle(image, (30, 20), (130, 100), (255, 255, 255), thickness=-1)
    return image


def test_hough_finds_the_sides_of_a_rectangle() -> None:
    from annotators.hough import detect_segments

    segments = detect_segments(_rectangle(), min_length=16.0, min_score=0.0)
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    assert len(segments) >= 4
    assert (lengths >= 16).all()
    horizontal = np.abs(segments[:, 1] - segments[:, 3]) < 2
    vertical = np.abs(segments[:, 0] - segments[:, 2]) < 2
    assert (horizontal | vertical).all()
    assert lengths[horizontal].max() > 90 and lengths[vertical].max() > 70  # the 100x80 sides


def test_hough_draws_thin_white_lines_and_filters_by_length() -> None:
    (out,) = run("hough", [_rectangle()])
    assert set(np.unique(out)) == {0, 255}
    lit = out[:, :, 0] > 0
    assert lit[:, 60:100].sum(axis=0).max() <= 4  # two 1-px horizontal sides, no thick strokes
    (none,) = run("hough", [_rectangle()], min_length=500.0)
    assert not none.any()


def test_hough_default_is_lsd_standard_refinement_drawn_at_min_length(photos) -> None:
    """The default map, written out with OpenCV directly: LSD with standard refinement, no NFA test."""
    for image, out in zip(photos, run("hough", photos)):
        lines = cv2.createLineSegmentDetector(cv2.LSD_REFINE_STD, 0.8).detect(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))[0].reshape(-1, 4)
        expected = np.zeros(image.shape[:2], np.uint8)
        for x1, y1, x2, y2 in lines:
            if np.hypot(x2 - x1, y2 - y1) >= 16:
                cv2.line(expected, (int(x1), int(y1)), (int(x2), int(y2)), 255, 1)
        np.testing.assert_array_equal(out[:, :, 0], expected)


def test_hough_standard_refinement_keeps_the_advanced_segments(photos) -> None:
    """Every segment the NFA-validated (advanced) refinement draws lies on the default map, within 1 px."""
    for image in photos:
        (fast,) = run("hough", [image])
        (validated,) = run("hough", [image], refine="advanced")
        near = cv2.dilate(fast[:, :, 0], np.ones((3, 3), np.uint8)) > 0
        drawn = validated[:, :, 0] > 0
        assert (drawn & near).sum() >= 0.99 * drawn.sum()
        assert drawn.sum() <= (fast[:, :, 0] > 0).sum()  # the NFA test only removes segments


def test_hough_score_filter_needs_the_advanced_refinement(photos) -> None:
    with pytest.raises(ValueError, match="refine='advanced'"):
        annotators.create("hough", min_score=5.0)
    (all_scores,) = run("hough", [photos[0]], refine="advanced")
    (high_scores,) = run("hough", [photos[0]], refine="advanced", min_score=20.0)
    assert 0 < (high_scores > 0).sum() < (all_scores > 0).sum()


def test_hough_blank_image_is_black() -> None:
    (out,) = run("hough", [np.full((64, 64, 3), 128, np.uint8)])
    assert not out.any()


@pytest.mark.parametrize("name", ["canny", "scribble_xdog", "threshold", "binary", "lineart_standard", "hough"])
def test_edge_like_maps_are_white_on_black(name: str, astronaut) -> None:
    (out,) = run(name, [astronaut])
    assert out.mean() < 128  # mostly black background
    assert out.max() == 255 or name == "lineart_standard"
