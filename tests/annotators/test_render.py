"""The shared OpenPose drawing against ``shared/parity/openpose_draw`` (v1.1, exact), and the JSON form."""

import numpy as np
import pytest

from annotators.data import count_body_keypoints
from annotators.render import HAND_EDGES, Person, PoseResult, draw_body, draw_faces, draw_hands, draw_people_in_turn
from tests.parity import case

DRAW = case("openpose_draw")
SIZE = 512


def _bodies() -> list[np.ndarray]:
    """The fixture's candidate/subset pair as one (18, 3) array per person (missing: confidence 0)."""
    candidate, subset = DRAW.golden["v11_candidate_norm"], DRAW.golden["v11_subset"]
    bodies = []
    for row in subset:
        body = np.zeros((18, 3))
        for joint, index in enumerate(row[:18].astype(int)):
            if index != -1:
                body[joint] = (*candidate[index], 1.0)
        bodies.append(body)
    return bodies


def _points(peaks: np.ndarray) -> np.ndarray:
    """Reference peaks (missing stored as -1/W) as (N, 3) keypoints."""
    found = (peaks >= 0).all(axis=1)
    return np.column_stack([np.where(found[:, None], peaks, 0.0), found.astype(float)])


def _pose() -> PoseResult:
    hands = [_points(h) for h in DRAW.golden["v11_hand_peaks_norm"]]
    (face,) = [_points(f) for f in DRAW.golden["v11_face_peaks_norm"]]
    body_a, body_b = _bodies()
    return PoseResult(SIZE, SIZE, [Person(body=body_a, left_hand=hands[0], face=face), Person(body=body_b, right_hand=hands[1])])


def _canvas() -> np.ndarray:
    return np.zeros((SIZE, SIZE, 3), np.uint8)


def test_fixture_has_missing_points() -> None:
    bodies = _bodies()
    assert [int((b[:, 2] > 0).sum()) for b in bodies] == [18, 15]
    assert len(HAND_EDGES) == 20


def test_draw_body_matches_v11_exactly() -> None:
    np.testing.assert_array_equal(draw_body(_canvas(), _bodies()), DRAW.golden["v11_draw_bodypose"])


def test_draw_hands_matches_v11_exactly() -> None:
    hands = [_points(h) for h in DRAW.golden["v11_hand_peaks_norm"]]
    np.testing.assert_array_equal(draw_hands(_canvas(), hands), DRAW.golden["v11_draw_handpose"])


def test_draw_faces_matches_v11_exactly() -> None:
    faces = [_points(f) for f in DRAW.golden["v11_face_peaks_norm"]]
    np.testing.assert_array_equal(draw_faces(_canvas(), faces), DRAW.golden["v11_draw_facepose"])


def test_draw_pose_matches_v11_exactly() -> None:
    np.testing.assert_array_equal(_pose().draw(), DRAW.golden["v11_draw_pose_all"])


def test_json_form_round_trips_and_marks_missing_points() -> None:
    pose = _pose()
    data = pose.to_json()
    assert (data["canvas_width"], data["canvas_height"]) == (SIZE, SIZE)
    first, second = data["people"]
    assert len(first["pose_keypoints_2d"]) == 54 and len(first["hand_left_keypoints_2d"]) == 63
    assert second["hand_left_keypoints_2d"] == [] and second["face_keypoints_2d"] == []
    # person B lacks l_elbow (6): stored as 0, 0, 0; its nose is in pixels
    assert second["pose_keypoints_2d"][18:21] == [0.0, 0.0, 0.0]
    assert second["pose_keypoints_2d"][0:2] == pytest.approx(list(DRAW.golden["v11_candidate_norm"][18] * SIZE))
    assert count_body_keypoints(data) == pose.body_keypoint_count() == 33
    np.testing.assert_array_equal(PoseResult.from_json(data).draw(), DRAW.golden["v11_draw_pose_all"])


def test_empty_result_draws_black_canvas() -> None:
    pose = PoseResult(96, 64)
    assert pose.to_json() == {"people": [], "canvas_width": 96, "canvas_height": 64}
    canvas = pose.draw()
    assert canvas.shape == (64, 96, 3) and not canvas.any()


def test_sd_webui_drawing_in_turn() -> None:
    """sd-webui dims each limb's colour instead of the canvas: one body alone is drawn exactly as
    v1.1 draws it; several are drawn person by person, so a later body's limbs cover an earlier
    body's joints (the person-by-person map is checked exactly against sd-webui in test_dwpose)."""
    body_a, _ = _bodies()
    alone = draw_people_in_turn(_canvas(), [Person(body=body_a)], hands=False, face=False)
    np.testing.assert_array_equal(alone, draw_body(_canvas(), [body_a]))
    in_pixels = Person(body=body_a * np.array([SIZE, SIZE, 1.0]))
    np.testing.assert_array_equal(draw_people_in_turn(_canvas(), [in_pixels], scale=(1.0, 1.0)), alone)
    beside = body_a + np.array([12.0 / SIZE, 0.0, 0.0])  # overlapping the first
    both = draw_people_in_turn(_canvas(), [Person(body=body_a), Person(body=beside)])
    v11 = draw_body(_canvas(), [body_a, beside])
    assert (both != v11).any() and (both == v11).mean() > 0.99
    pose = _pose()
    full = draw_people_in_turn(_canvas(), pose.people)
    hands_drawn = draw_hands(_canvas(), pose.hands())
    assert (full[hands_drawn.any(axis=2)] != 0).any(axis=1).all()
