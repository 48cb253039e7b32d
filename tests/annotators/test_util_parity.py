"""HWC3, resize_image, Canny, nms, safe_step and min_max_norm against ``shared/parity/util``."""

import json

import numpy as np
import pytest

import annotators
from annotators.image import hwc3, resize_image
from annotators.ops import min_max_norm, nms, safe_step
from tests.parity import case

UTIL = case("util")
RESIZE_CASES = json.loads((UTIL.path / "cases.json").read_text())["cases"]


@pytest.mark.parametrize("name", ["in_gray_200x333", "in_gray1ch_97x130", "in_rgba_256x320"])
def test_hwc3_matches_reference(name: str) -> None:
    expected = UTIL.golden["hwc3_" + name.removeprefix("in_")]
    np.testing.assert_array_equal(hwc3(UTIL.golden[name]), expected)


def test_hwc3_returns_rgb_unchanged() -> None:
    rgb = UTIL.golden["in_rgb_300x451"]
    assert hwc3(rgb) is rgb


@pytest.mark.parametrize("spec", RESIZE_CASES, ids=lambda s: s["output"])
def test_resize_image_matches_reference(spec: dict) -> None:
    out = resize_image(UTIL.golden[spec["hwc3"]], spec["resolution"])
    assert list(out.shape) == spec["out_shape"]
    np.testing.assert_array_equal(out, UTIL.golden[spec["output"]])


@pytest.mark.parametrize(("low", "high"), [(100, 200), (50, 150)])
def test_canny_annotator_matches_reference_exactly(low: int, high: int) -> None:
    (edges,) = annotators.create("canny", low_threshold=low, high_threshold=high)([UTIL.input_rgb])
    expected = UTIL.golden[f"canny_low{low}_high{high}"]
    np.testing.assert_array_equal(edges[:, :, 0], expected)
    np.testing.assert_array_equal(edges, hwc3(expected))


def test_canny_defaults_are_reference_constants() -> None:
    config = annotators.create("canny").config
    assert (config.low_threshold, config.high_threshold) == (100, 200)


@pytest.mark.parametrize(("threshold", "sigma", "key"), [(127, 3.0, "nms_t127_s3"), (40, 1.5, "nms_t40_s1p5")])
def test_nms_matches_reference(threshold: int, sigma: float, key: str) -> None:
    np.testing.assert_array_equal(nms(UTIL.golden["nms_input_u8"], threshold, sigma), UTIL.golden[key])


@pytest.mark.parametrize("step", [2, 3])
def test_safe_step_matches_reference(step: int) -> None:
    out = safe_step(UTIL.golden["safe_step_input_f64"], step)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, UTIL.golden[f"safe_step_step{step}"])


def test_min_max_norm_matches_reference() -> None:
    out = min_max_norm(UTIL.golden["min_max_norm_input"])
    np.testing.assert_array_equal(out, UTIL.golden["min_max_norm_out"])
