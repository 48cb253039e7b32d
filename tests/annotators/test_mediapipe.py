"""MediaPipe annotators on real photographs (scikit-image's astronaut, coffee and chelsea)."""

import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import pytest
from skimage import data

import annotators
from annotators.data import count_body_keypoints
from annotators.render import BODY_COLORS, COCO18_NAMES, PoseResult

POSE_IDS = ("mediapipe_pose", "mediapipe_hands", "mediapipe_face", "mediapipe_full")
LEGS = ("right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle")


@pytest.fixture(scope="module")
def pose_result(astronaut: np.ndarray) -> annotators.Annotation:
    (result,) = annotators.create("mediapipe_pose").annotate([astronaut])
    return result


def _body(data: dict) -> np.ndarray:
    (person,) = data["people"]
    return np.array(person["pose_keypoints_2d"]).reshape(18, 3)


def test_pose_finds_the_upper_body_and_reports_legs_missing(pose_result: annotators.Annotation) -> None:
    body = _body(pose_result.data)
    found = body[:, 2] > 0
    assert count_body_keypoints(pose_result.data) == int(found.sum()) >= 8
    assert (body[found, 2] > 0.5).all()  # above the default visibility threshold
    assert ((body[found, 0] >= 0) & (body[found, 0] < 512) & (body[found, 1] >= 0) & (body[found, 1] < 512)).all()
    for joint in ("nose", "neck", "right_shoulder", "left_shoulder"):
        assert found[COCO18_NAMES.index(joint)], joint
    for joint in LEGS:  # below the frame: never invented
        np.testing.assert_array_equal(body[COCO18_NAMES.index(joint)], 0.0, err_msg=joint)
    # the neck is the shoulders' midpoint
    shoulders = body[[COCO18_NAMES.index("right_shoulder"), COCO18_NAMES.index("left_shoulder")], :2]
    np.testing.assert_allclose(body[1, :2], shoulders.mean(axis=0))


def test_pose_map_carries_the_reference_limb_colours(pose_result: annotators.Annotation) -> None:
    body = _body(pose_result.data)
    for limb, (a, b) in enumerate([(1, 2), (1, 5)]):  # neck-right shoulder, neck-left shoulder
        x, y = ((body[a, :2] + body[b, :2]) / 2).astype(int)
        expected = tuple(int(c * 0.6) for c in BODY_COLORS[limb])  # limbs are dimmed to 60 %
        assert tuple(pose_result.map[y, x]) == expected, (limb, pose_result.map[y, x])
    nose_x, nose_y = body[0, :2].astype(int)
    assert tuple(pose_result.map[nose_y, nose_x]) == BODY_COLORS[0]  # joints are drawn at full colour
    np.testing.assert_array_equal(PoseResult.from_json(pose_result.data).draw(), pose_result.map)


def test_visibility_threshold_controls_found_joints(astronaut: np.ndarray, pose_result: annotators.Annotation) -> None:
    (strict,) = annotators.create("mediapipe_pose", visibility_threshold=0.9).annotate([astronaut])
    assert count_body_keypoints(strict.data) < count_body_keypoints(pose_result.data)


def _reference_face_map(image: np.ndarray) -> np.ndarray:
    """The sd-webui/controlnet_aux "MediaPipe face" drawing, rebuilt from MediaPipe's own drawing
    utilities: BGR-ordered colours drawn on black, channels reversed at the end."""
    from mediapipe.python.solutions import drawing_utils, face_mesh

    spec = drawing_utils.DrawingSpec
    styles = [
        (face_mesh.FACEMESH_FACE_OVAL, (10, 200, 10)), (face_mesh.FACEMESH_LEFT_EYE, (180, 200, 10)),
        (face_mesh.FACEMESH_LEFT_EYEBROW, (180, 220, 10)), (face_mesh.FACEMESH_RIGHT_EYE, (10, 200, 180)),
        (face_mesh.FACEMESH_RIGHT_EYEBROW, (10, 220, 180)), (face_mesh.FACEMESH_LIPS, (10, 180, 10)),
    ]  # fmt: skip
    connection_spec = {edge: spec(color=color, thickness=2, circle_radius=1) for edges, color in styles for edge in edges}
    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5) as mesh:
        (landmarks,) = mesh.process(image).multi_face_landmarks
    canvas = np.zeros_like(image)
    drawing_utils.draw_landmarks(canvas, landmarks, connections=connection_spec.keys(), landmark_drawing_spec=None, connection_drawing_spec=connection_spec)
    height, width = canvas.shape[:2]
    for index, color in ((468, (10, 200, 250)), (473, (250, 200, 10))):
        point = landmarks.landmark[index]
        x, y = int(width * point.x), int(height * point.y)
        canvas[y - 2 : y + 2, x - 2 : x + 2, :] = color
    return canvas[:, :, ::-1]


def test_face_finds_one_face_drawn_in_the_mediapipe_face_convention(astronaut: np.ndarray) -> None:
    (result,) = annotators.create("mediapipe_face").annotate([astronaut])
    (person,) = result.data["people"]
    assert len(person["face_keypoints_2d"]) == 478 * 3 and person["pose_keypoints_2d"] == []
    np.testing.assert_array_equal(result.map, _reference_face_map(astronaut))


def test_face_size_filter_drops_small_faces(astronaut: np.ndarray) -> None:
    (result,) = annotators.create("mediapipe_face", min_face_size=400).annotate([astronaut])
    assert result.data["people"] == [] and not result.map.any()


def test_full_gives_one_person_with_body_and_face(astronaut: np.ndarray, pose_result: annotators.Annotation) -> None:
    (result,) = annotators.create("mediapipe_full").annotate([astronaut])
    (person,) = result.data["people"]
    assert len(person["face_keypoints_2d"]) == 478 * 3
    assert count_body_keypoints(result.data) >= 8
    # body drawn like mediapipe_pose, face mesh on top: the face-mesh colours appear too
    assert (result.map == (10, 200, 10)).all(axis=2).any()
    assert (result.map == pose_result.map).all(axis=2).mean() > 0.99


@pytest.mark.parametrize("name", POSE_IDS)
def test_photos_without_people_give_empty_maps(name: str) -> None:
    annotator = annotators.create(name)
    for result in annotator.annotate([data.coffee(), data.chelsea()]):
        assert result.data["people"] == []
        assert not result.map.any()


def test_hands_are_mapped_to_openpose_hands() -> None:
    """MediaPipe's mirrored handedness label is swapped into the person's own left/right."""
    from mediapipe.framework.formats import classification_pb2, landmark_pb2

    rng = np.random.default_rng(0)
    points = rng.uniform(0.2, 0.8, (21, 2))
    landmarks = landmark_pb2.NormalizedLandmarkList(landmark=[landmark_pb2.NormalizedLandmark(x=x, y=y) for x, y in points])
    handedness = classification_pb2.ClassificationList(classification=[classification_pb2.Classification(label="Right", score=0.9)])

    class Results:
        multi_hand_landmarks = [landmarks]
        multi_handedness = [handedness]

    result = annotators.create("mediapipe_hands")._annotate_one(Results(), 100, 200)
    (person,) = result.data["people"]
    assert person["hand_right_keypoints_2d"] == [] and len(person["hand_left_keypoints_2d"]) == 63
    left = np.array(person["hand_left_keypoints_2d"]).reshape(21, 3)
    np.testing.assert_allclose(left[:, :2], points * (200, 100), rtol=1e-6)
    assert (result.map == (0, 0, 255)).all(axis=2).any()  # OpenPose red hand points


def test_person_mask_marks_the_astronaut(astronaut: np.ndarray, pose_result: annotators.Annotation) -> None:
    annotator = annotators.create("person_mask")
    (mask,) = annotator([astronaut])
    nose_x, nose_y = _body(pose_result.data)[0, :2].astype(int)
    assert annotator.grayscale and (mask[:, :, 0] == mask[:, :, 2]).all()
    assert set(np.unique(mask)) <= {0, 255}
    assert mask[nose_y, nose_x, 0] == 255 and mask[0, 0, 0] == 0
    (soft,) = annotators.create("person_mask", soft=True)([astronaut])
    assert len(np.unique(soft)) > 2


def test_unbundled_pose_complexity_is_a_clear_error() -> None:
    for name in ("mediapipe_pose", "mediapipe_full"):
        with pytest.raises(ValueError, match="model_complexity=1"):
            annotators.create(name, model_complexity=2)


def test_descriptions_point_to_openpose_for_crowds() -> None:
    for name in ("mediapipe_pose", "mediapipe_full"):
        cls = annotators.get_class(name)
        assert "one person" in cls.description and "openpose" in cls.description
        assert "ONE person" in (cls.__doc__ or "")


def _annotate_in_worker(annotator: annotators.Annotator, image: np.ndarray) -> tuple[np.ndarray, bool]:
    arrived_without_graph = annotator._graph is None
    (result,) = annotator([image])
    return result, arrived_without_graph


def test_graph_is_lazy_reused_and_rebuilt_per_process(astronaut: np.ndarray, pose_result: annotators.Annotation) -> None:
    annotator = annotators.create("mediapipe_pose")
    assert annotator._graph is None  # nothing built by the constructor
    annotator([astronaut])
    graph = annotator._graph
    annotator([astronaut])
    assert annotator._graph is graph  # reused across calls
    assert pickle.loads(pickle.dumps(annotator))._graph is None
    annotator._graph_pid = -1  # as if inherited through a fork: the next call builds its own
    annotator([astronaut])
    assert annotator._graph is not graph
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        worker_map, arrived_without_graph = pool.submit(_annotate_in_worker, annotator, astronaut).result(timeout=300)
    assert arrived_without_graph
    np.testing.assert_array_equal(worker_map, pose_result.map)
    annotator.close()
    assert annotator._graph is None


def test_graph_follows_the_lifecycle() -> None:
    """Nothing is built in the constructor; load() builds this process's graph, close() releases it."""
    pose = annotators.create("mediapipe_pose")
    assert pose._graph is None and pose.weights is not None and pose.weights.format == "bundled"
    assert pose.weights_present() and pose.load() is pose and pose._graph is not None
    pose.close()
    assert pose._graph is None


def test_mediapipe_native_info_and_warning_logs_are_dropped_and_errors_pass(capfd: pytest.CaptureFixture[str], astronaut: np.ndarray) -> None:
    import os
    import re

    from annotators.mediapipe import quiet_native_logs

    annotator = annotators.create("mediapipe_hands")  # a fresh graph: its calculators log as they open
    annotator([astronaut])
    annotator.close()
    err = capfd.readouterr().err
    assert not re.search(r"^[IW]\d{4} |TensorFlow Lite|absl::InitializeLog", err, re.MULTILINE), err
    with quiet_native_logs():
        os.write(2, b"W0000 00:00:1796186957.740900   42 x.cc:1] noise\nE0000 00:00:1796186957.740901   42 x.cc:2] a real error\n")
    err = capfd.readouterr().err
    assert "a real error" in err and "noise" not in err
