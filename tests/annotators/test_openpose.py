"""OpenPose body and hand annotators against ``shared/parity/openpose_body`` and ``openpose_hand``."""

import cv2
import numpy as np
import pytest

import annotators
from annotators import openpose
from annotators.openpose import body_net_input, hand_net_input, hand_peaks, smart_resize
from annotators.data import count_body_keypoints
from tests.parity import assert_maps_agree, assert_raw_close, case

BODY = case("openpose_body")
HAND = case("openpose_hand")


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


@pytest.fixture(scope="module")
def body(seeded_weights) -> openpose.OpenPose:
    return annotators.create("openpose", weights=str(seeded_weights.ensure(("body_pose_model.pth",)))).load()


@pytest.fixture(scope="module")
def hand(seeded_weights) -> openpose.OpenPoseHand:
    folder = seeded_weights.ensure(("body_pose_model.pth", "hand_pose_model.pth"))
    return annotators.create("openpose_hand", weights=str(folder)).load()


def _body_input_368(bgr: np.ndarray) -> np.ndarray:
    """The fixture's second body input: the image resized to 368x368 (no padding needed)."""
    return np.ascontiguousarray(smart_resize(bgr, 368, 368).transpose(2, 0, 1).astype(np.float32) / 256 - 0.5)


def test_body_net_inputs_match_exactly() -> None:
    net_input, pad = body_net_input(_bgr(BODY.input_rgb))
    assert pad == (0, 0)
    np.testing.assert_array_equal(net_input, BODY.golden["net_input_scale0p5_f16exact"][0].astype(np.float32))
    np.testing.assert_array_equal(_body_input_368(_bgr(BODY.input_rgb)), BODY.golden["net_input_368_f16exact"][0].astype(np.float32))


@pytest.mark.parametrize("suffix", ["scale0p5", "368"])
def test_body_raw_pafs_and_heatmaps_match(body: openpose.OpenPose, suffix: str) -> None:
    net_input = BODY.golden[f"net_input_{suffix}_f16exact"].astype(np.float32)
    ((pafs, heatmaps),) = body._run(body.model["body"], [net_input[0]])
    assert_raw_close(pafs, BODY.golden[f"raw_paf_L1_{suffix}"], "pafs")
    assert_raw_close(heatmaps, BODY.golden[f"raw_heatmap_L2_{suffix}"], "heatmaps")
    assert heatmaps.min() >= 0 and pafs.min() < 0  # the upstream ReLU on the heatmap output only


def test_body_pipeline_candidate_and_subset(body: openpose.OpenPose) -> None:
    """Secondary check (threshold-sensitive): the same peaks and people as the reference."""
    ((candidate, subset),) = body.detect_bodies(body.model, [_bgr(BODY.input_rgb)])
    expected_candidate, expected_subset = BODY.golden["pipeline_candidate"], BODY.golden["pipeline_subset"]
    assert candidate.shape == expected_candidate.shape and subset.shape == expected_subset.shape
    np.testing.assert_array_equal(candidate[:, [0, 1, 3]], expected_candidate[:, [0, 1, 3]])
    np.testing.assert_allclose(candidate[:, 2], expected_candidate[:, 2], atol=1e-4 * np.abs(expected_candidate[:, 2]).max())
    np.testing.assert_array_equal(subset[:, [*range(18), 19]], expected_subset[:, [*range(18), 19]])
    np.testing.assert_allclose(subset[:, 18], expected_subset[:, 18], rtol=1e-5)


def test_body_final_map_and_keypoints(body: openpose.OpenPose) -> None:
    (result,) = body.annotate([BODY.input_rgb])
    fraction = assert_maps_agree(result.map, BODY.golden["final_map"], name="openpose final map")
    assert fraction >= 0.9999
    people = result.data["people"]
    expected_subset = BODY.golden["pipeline_subset"]
    assert len(people) == len(expected_subset)
    assert count_body_keypoints(result.data) == int((expected_subset[:, :18] >= 0).sum())
    assert all(p["hand_left_keypoints_2d"] == [] for p in people)  # the body annotator looks for no hands


@pytest.fixture(scope="module")
def hand_run(hand: openpose.OpenPoseHand) -> dict[str, np.ndarray]:
    """One run of the four-scale hand pipeline on the fixture crop, recording the raw net outputs."""
    raw: dict[int, np.ndarray] = {}

    def record(_module, _inputs, output) -> None:
        raw[output.shape[-1]] = output[0].float().numpy().copy()

    handle = hand.model["hand"].register_forward_hook(record)
    try:
        (heatmaps,) = hand.hand_heatmaps(hand.model, [_bgr(HAND.input_rgb)])
    finally:
        handle.remove()
    return {"heatmaps": heatmaps, **{f"raw_{size}": out for size, out in raw.items()}}


def test_hand_net_input_matches_exactly() -> None:
    blurred = cv2.GaussianBlur(_bgr(HAND.input_rgb), (0, 0), 0.8)
    net_input, pad = hand_net_input(blurred, 368)
    assert pad == (0, 0)
    np.testing.assert_array_equal(net_input, HAND.golden["net_input_scale1p0_f16exact"][0].astype(np.float32))


@pytest.mark.parametrize(("suffix", "size"), [("0p5", 23), ("1p0", 46), ("1p5", 69), ("2p0", 92)])
def test_hand_raw_heatmaps_match(hand_run: dict[str, np.ndarray], suffix: str, size: int) -> None:
    assert_raw_close(hand_run[f"raw_{size}"], HAND.golden[f"raw_heatmap_scale{suffix}"], f"hand heatmaps {suffix}")


def test_hand_pipeline_peaks_match(hand_run: dict[str, np.ndarray]) -> None:
    peaks = hand_peaks(hand_run["heatmaps"], 368, 368, 0.05)
    np.testing.assert_array_equal(peaks[:, :2].astype(int), HAND.golden["pipeline_peaks_xy"])
    assert ((peaks[:, 2] > 0) == HAND.golden["pipeline_peaks_xy"].any(axis=1)).all()


def test_openpose_hand_adds_hands_to_map_and_json(seeded_weights, body: openpose.OpenPose) -> None:
    """End to end on a small crop where the seeded body net finds arms; one hand scale keeps it fast."""
    weights = seeded_weights.location(openpose.OpenPoseHand.weights)
    hand = annotators.create("openpose_hand", weights=str(weights), hand_scales=1)
    image = BODY.input_rgb[:64, :96].copy()
    (with_hands,) = hand.annotate([image])
    (body_only,) = body.annotate([image])
    assert with_hands.map.shape == image.shape and with_hands.map.dtype == np.uint8
    found = [p[key] for p in with_hands.data["people"] for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d") if p[key]]
    assert found and all(len(h) == 63 for h in found)
    assert [p["pose_keypoints_2d"] for p in with_hands.data["people"]] == [p["pose_keypoints_2d"] for p in body_only.data["people"]]
    # hand points are drawn as red (0, 0, 255) dots, which the body drawing never produces
    red = (with_hands.map == (0, 0, 255)).all(axis=2).sum()
    assert red > 0 and (body_only.map == (0, 0, 255)).all(axis=2).sum() < red


def test_checkpoint_remap_accepts_module_keys_and_names_mismatches() -> None:
    from annotators.nets.openpose import HandPoseNet, remap_checkpoint
    from annotators.weights import load_strict

    net = HandPoseNet()
    published = {key.split(".", 1)[1]: value for key, value in net.state_dict().items()}
    assert set(remap_checkpoint(published, "hand")) == set(net.state_dict())
    assert set(remap_checkpoint(net.state_dict(), "hand")) == set(net.state_dict())  # a re-saved state_dict
    del published["Mconv7_stage6.bias"]
    with pytest.raises(ValueError, match="1 missing key"):
        load_strict(HandPoseNet(), published, lambda c: remap_checkpoint(c, "hand"), source="hand_pose_model.pth")
