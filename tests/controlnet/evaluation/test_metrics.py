"""Each metric on hand-built cases whose answers are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controlnet.evaluation import metrics


def line_map(column: int, size: int = 10) -> np.ndarray:
    edges = np.zeros((size, size), np.uint8)
    edges[:, column] = 255
    return edges


# --- edges -------------------------------------------------------------------------------------


def test_identical_edges_are_perfect() -> None:
    assert metrics.edge_f1(line_map(3), line_map(3)) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}


def test_a_shifted_edge_misses_without_tolerance_and_hits_with_one_pixel() -> None:
    target, shifted = line_map(3), line_map(4)
    assert metrics.edge_f1(target, shifted)["f1"] == 0.0
    assert metrics.edge_f1(target, shifted, tolerance=1) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    # Two pixels off is still a miss at a tolerance of one.
    assert metrics.edge_f1(target, line_map(5), tolerance=1)["f1"] == 0.0


def test_extra_and_missing_edge_pixels_give_the_hand_computed_f1() -> None:
    target = line_map(3)
    extra = target.copy()
    extra[0, 7:] = 255  # 3 stray pixels, far from the line
    extra[9, 8:] = 255  # and 2 more: 15 predicted, 10 of them right
    # precision 10/15, recall 1: F1 = 2 * (2/3) / (5/3) = 0.8
    scores = metrics.edge_f1(target, extra)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == 1.0 and scores["f1"] == pytest.approx(0.8)
    half = target.copy()
    half[5:, 3] = 0  # 5 of the 10 found: precision 1, recall 1/2, F1 2/3
    assert metrics.edge_f1(target, half)["f1"] == pytest.approx(2 / 3)


def test_edges_on_one_side_only_score_zero_and_none_on_either_side_one() -> None:
    empty = np.zeros((10, 10), np.uint8)
    assert metrics.edge_f1(empty, empty)["f1"] == 1.0
    assert metrics.edge_f1(line_map(3), empty)["f1"] == 0.0
    assert metrics.edge_f1(empty, line_map(3))["f1"] == 0.0


def test_colour_widened_maps_score_as_their_gray_channel() -> None:
    gray, wide = line_map(3), np.repeat(line_map(3)[:, :, None], 3, axis=2)
    assert metrics.edge_f1(gray, wide)["f1"] == 1.0


def test_maps_of_different_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        metrics.edge_f1(line_map(3, 10), line_map(3, 12))


def test_mask_iou_of_a_square_shifted_by_one_column() -> None:
    a = np.zeros((8, 8), np.uint8)
    b = a.copy()
    a[2:6, 2:6] = 255
    b[2:6, 3:7] = 255
    assert metrics.mask_iou(a, a) == 1.0
    assert metrics.mask_iou(a, b) == pytest.approx(12 / 20)  # overlap 4x3, union 16 + 16 - 12
    assert metrics.mask_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0


# --- soft maps ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def soft_map() -> np.ndarray:
    from skimage import data

    return np.asarray(data.camera()[::2, ::2])  # 256 x 256, enough for five MS-SSIM scales


def test_identical_soft_maps_are_perfect(soft_map: np.ndarray) -> None:
    assert metrics.ssim(soft_map, soft_map) == pytest.approx(1.0)
    assert metrics.ms_ssim(soft_map, soft_map) == pytest.approx(1.0)
    assert metrics.psnr(soft_map, soft_map) == metrics.PSNR_CAP


def test_psnr_of_a_difference_of_one_everywhere() -> None:
    a = np.full((16, 16), 100, np.uint8)
    assert metrics.psnr(a, a + 1) == pytest.approx(20 * math.log10(255))  # MSE 1: 48.13 dB


def test_ms_ssim_statistics_are_scikit_images_ssim(soft_map: np.ndarray) -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    noisy = np.clip(soft_map + rng.normal(0, 20, soft_map.shape), 0, 255).astype(np.uint8)
    full, _ = metrics._ssim_and_contrast(soft_map.astype(np.float64), noisy.astype(np.float64))
    reference = structural_similarity(soft_map, noisy, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert full == pytest.approx(reference, abs=1e-12)
    assert metrics.ssim(soft_map, noisy) == pytest.approx(reference, abs=1e-12)


def test_ms_ssim_is_the_weighted_product_over_five_scales(soft_map: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    noisy = np.clip(soft_map + rng.normal(0, 25, soft_map.shape), 0, 255).astype(np.uint8)
    expected, x, y = 1.0, soft_map.astype(np.float64), noisy.astype(np.float64)
    for level, weight in enumerate(metrics.MS_SSIM_WEIGHTS):  # 256, 128, 64, 32, 16 pixels
        full, contrast = metrics._ssim_and_contrast(x, y)
        expected *= (full if level == 4 else contrast) ** weight
        x, y = x.reshape(x.shape[0] // 2, 2, -1, 2).mean(axis=(1, 3)), y.reshape(y.shape[0] // 2, 2, -1, 2).mean(axis=(1, 3))
    assert metrics.ms_ssim(soft_map, noisy) == pytest.approx(expected, abs=1e-12)
    # Noise hurts the fine scales most, which MS-SSIM weighs less than SSIM does.
    assert metrics.ssim(soft_map, noisy) < metrics.ms_ssim(soft_map, noisy) < 1.0


def test_ms_ssim_of_a_map_too_small_for_two_scales_is_ssim() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    b = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    assert metrics.ms_ssim(a, b) == pytest.approx(max(metrics.ssim(a, b), 0.0))


def test_similarity_of_maps_smaller_than_the_window_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))


def test_depth_rmse_of_four_pixels_off_by_ten() -> None:
    a = np.full((10, 10), 50, np.uint8)
    b = a.copy()
    b[0, :4] = 60  # squared error 100 on 4 of 100 pixels: MSE 4, RMSE 2
    assert metrics.rmse(a, a) == 0.0
    assert metrics.rmse(a, b) == pytest.approx(2.0)


# --- normals -----------------------------------------------------------------------------------


def test_angular_error_of_normals_seventy_degrees_apart_on_half_the_pixels() -> None:
    up = np.full((4, 4, 3), 255, np.uint8)  # decodes to (1, 1, 1)
    tilted = up.copy()
    tilted[:2, :, 1] = 0  # (1, -1, 1) on the top half: cos = 1/3, 70.53 degrees
    assert metrics.angular_error(up, up) == {"angular_error": 0.0, "angular_error_median": 0.0, "within_11_25": 1.0}
    scores = metrics.angular_error(up, tilted)
    angle = math.degrees(math.acos(1 / 3))
    assert scores["angular_error"] == pytest.approx(angle / 2)
    assert scores["within_11_25"] == 0.5


# --- segmentation ------------------------------------------------------------------------------


def test_mean_iou_with_two_mislabelled_pixels() -> None:
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    found = target.copy()
    found[0:2, 2] = 0  # two pixels of class 1 called 0
    # class 0: 4 / 6, class 1: 2 / 4, class 2: 8 / 8
    scores = metrics.mean_iou(target, found)
    assert scores["miou"] == pytest.approx((4 / 6 + 2 / 4 + 1) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(14 / 16)
    assert metrics.mean_iou(target, target) == {"miou": 1.0, "pixel_accuracy": 1.0}


def test_a_class_only_in_the_sample_counts_and_ignored_pixels_do_not() -> None:
    target = np.zeros((2, 4), np.int64)
    found = target.copy()
    found[0, 0] = 5  # a class the condition does not have: IoU 0; class 0: 7 / 8
    assert metrics.mean_iou(target, found)["miou"] == pytest.approx((7 / 8 + 0) / 2)
    target[0, 0] = 255
    assert metrics.mean_iou(target, found, ignore_index=255)["miou"] == 1.0


# --- pose --------------------------------------------------------------------------------------


def person(points: dict[int, tuple[float, float]]) -> dict[str, np.ndarray]:
    body = np.zeros((18, 3))
    for index, (x, y) in points.items():
        body[index] = (x, y, 1.0)
    return {"pose_keypoints_2d": body}


# A person whose keypoint bounding box is 10 x 10 pixels: PCK@0.1 allows 1 pixel.
WANTED = person({0: (0, 0), 1: (10, 0), 2: (10, 10)})


def test_identical_poses_are_perfect() -> None:
    assert metrics.pck([WANTED], [WANTED]) == 1.0
    assert metrics.oks([WANTED], [WANTED]) == 1.0


def test_pck_counts_a_near_point_right_and_a_far_or_missing_point_wrong() -> None:
    found = person({0: (0.5, 0), 1: (12, 0)})  # within 1 px; 2 px off; point 2 missing
    assert metrics.pck([WANTED], [found]) == pytest.approx(1 / 3)
    assert metrics.pck([WANTED], [found], alpha=0.25) == pytest.approx(2 / 3)  # 2.5 px allowed


def test_a_point_missing_in_the_condition_is_not_scored() -> None:
    found = person({0: (0, 0), 1: (10, 0), 2: (10, 10), 5: (90, 90)})
    assert metrics.pck([WANTED], [found]) == 1.0


def test_people_are_matched_whatever_their_order() -> None:
    other = person({0: (50, 50), 1: (70, 50), 2: (70, 70)})
    assert metrics.pck([WANTED, other], [other, WANTED]) == 1.0
    assert metrics.oks([WANTED, other], [other, WANTED]) == pytest.approx(1.0)
    # A person the sample lacks scores zero for all their keypoints.
    assert metrics.pck([WANTED, other], [WANTED]) == pytest.approx(3 / 6)
    assert metrics.oks([WANTED, other], [WANTED]) == pytest.approx(0.5)


def test_oks_of_a_nose_one_pixel_off() -> None:
    found = person({0: (1, 0), 1: (10, 0), 2: (10, 10)})
    # area 10 * 10, nose sigma 0.026: exp(-1 / (2 * 100 * 0.052^2)); the other two points score 1
    nose = math.exp(-1 / (2 * 100 * (2 * 0.026) ** 2))
    assert metrics.oks([WANTED], [found]) == pytest.approx((nose + 2) / 3)


def test_no_person_on_either_side_is_perfect_and_a_person_where_none_is_wanted_is_not() -> None:
    assert metrics.pck([], []) == 1.0 and metrics.oks([], []) == 1.0
    assert metrics.pck([], [WANTED]) == 0.0 and metrics.oks([], [WANTED]) == 0.0


def test_openpose_json_is_read_in_the_pixels_of_the_condition() -> None:
    data = {"people": [{"pose_keypoints_2d": [10.0, 5.0, 0.9] + [0.0] * 51}], "canvas_width": 100, "canvas_height": 50}
    (found,) = metrics.people_from_openpose(data, 200, 100)
    np.testing.assert_allclose(found["pose_keypoints_2d"][0], [20.0, 10.0, 0.9])
    assert metrics.people_from_openpose(None, 10, 10) == []


# --- aggregation -------------------------------------------------------------------------------


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = np.random.default_rng(3).normal(0.6, 0.1, 50)
    low, high = metrics.bootstrap_interval(values, 2000, 0.95, seed=7)
    assert low < values.mean() < high
    assert (low, high) == metrics.bootstrap_interval(values, 2000, 0.95, seed=7)
    assert (low, high) != metrics.bootstrap_interval(values, 2000, 0.95, seed=8)
    # The interval of a mean of 50 values is about 4 standard errors wide at 95%.
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / math.sqrt(50), rel=0.2)
    assert metrics.bootstrap_interval([1.0, 1.0, 1.0], 100, 0.95, 0) == (1.0, 1.0)
    assert metrics.bootstrap_interval([0.5], 100, 0.95, 0) is None
