"""MediaPipe pose, hands, face mesh, holistic and selfie segmentation as ControlNet conditions.

Method: Google MediaPipe legacy solutions (BlazePose, V. Bazarevsky et al. 2020; MediaPipe Hands,
F. Zhang et al. 2020; Face Mesh with attention, Y. Kartynnik et al. 2019; Selfie Segmentation), run
through the ``mediapipe`` package, whose wheel bundles the models (Apache-2.0), so these annotators
work right after install with nothing to fetch. Poses and hands are drawn in the ControlNet v1.1
OpenPose convention (:mod:`annotators.render`); faces in the "MediaPipe face" ControlNet convention
(sd-webui-controlnet / controlnet_aux ``mediapipe_face``: face oval, eyes, eyebrows and lips of the
mesh in fixed colours, 2 px lines, plus 4x4 pupil squares).

Keypoints come back in OpenPose JSON form (``Annotation.data``). Differences from OpenPose:
MediaPipe's legacy pose finds at most one person per image; the neck is the shoulders' midpoint;
each MediaPipe hand is its own entry in ``people`` (it cannot be tied to a body); faces carry the 478
mesh landmarks in MediaPipe's order rather than OpenPose's 70. Points outside the image, or below the
visibility threshold, are reported missing (0, 0, 0).

The MediaPipe graph is built on first use (never in the constructor) and reused across calls; each
process builds its own (the graph is dropped when the annotator is pickled, and rebuilt after a fork).
MediaPipe's C++ side (absl, TFLite) writes INFO and WARNING lines straight to the process's stderr
each time a graph is built or run; they are dropped here, and anything else it writes (errors) is
passed on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from annotators.base import Annotation, Annotator, AnnotatorConfig, param
from annotators.data import POSE
from annotators.render import BODY_POINTS, Person, PoseResult
from annotators.weights import Weights

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "MediaPipeFace",
    "MediaPipeFull",
    "MediaPipeHands",
    "MediaPipePose",
    "PersonMask",
    "draw_face_mesh",
    "pose_to_coco18",
]

# COCO-18 joint -> BlazePose landmark (person's own left/right in both); the neck (1) is derived.
_COCO18_FROM_BLAZEPOSE: dict[int, int] = {
    0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25, 13: 27,
    14: 5, 15: 2, 16: 8, 17: 7,
}  # fmt: skip
_NECK, _LEFT_SHOULDER, _RIGHT_SHOULDER = 1, 11, 12

# The "MediaPipe face" ControlNet colours, given here in RGB (the reference draws BGR-ordered tuples
# on a black canvas and then reverses the channels).
_HEAD = (10, 200, 10)
_MOUTH = (10, 180, 10)
_LEFT_EYE, _LEFT_EYEBROW, _LEFT_IRIS = (10, 200, 180), (10, 220, 180), (10, 200, 250)
_RIGHT_EYE, _RIGHT_EYEBROW, _RIGHT_IRIS = (180, 200, 10), (180, 220, 10), (250, 200, 10)
_PUPILS = ((468, _RIGHT_IRIS), (473, _LEFT_IRIS))  # refined landmarks at the iris centres
_FACE_LINE_THICKNESS = 2
_PUPIL_HALF_WIDTH = 2


#: MediaPipe's own log lines: absl's INFO/WARNING lines (``W0000 00:00:...  123 file.cc:45] ...``),
#: TFLite's ``INFO:`` lines and absl's notice that logging is not initialised.
_NATIVE_NOISE = re.compile(rb"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] |INFO: |WARNING: All log messages before absl::InitializeLog\(\) is called)")


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Route the process's stderr (file descriptor 2) to a temporary file while MediaPipe runs, then
    pass on every line but MediaPipe's INFO and WARNING ones."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(line for line in capture.read().splitlines(keepends=True) if not _NATIVE_NOISE.match(line))
            if kept:
                os.write(2, kept)


def _import_solutions() -> Any:
    try:
        from mediapipe.python import solutions
    except ImportError as err:
        raise ImportError(
            f"the MediaPipe annotators need the mediapipe package (0.10.21, Python < 3.13): {err}"
        ) from None
    return solutions


def _bundled_pose_model(model_complexity: int) -> bool:
    """Whether the pose landmark model for this complexity ships with (or was already added to)
    the installed mediapipe, so that using it needs no download. Only 1 ("full") is bundled."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return model_complexity == 1
    name = {0: "lite", 1: "full", 2: "heavy"}[model_complexity]
    folder = Path(next(iter(spec.submodule_search_locations))) / "modules" / "pose_landmark"
    return (folder / f"pose_landmark_{name}.tflite").is_file()


def _check_pose_complexity(config: AnnotatorConfig, model_complexity: int) -> None:
    if model_complexity != 1 and not _bundled_pose_model(model_complexity):
        raise ValueError(
            f"{type(config).__name__}.model_complexity={model_complexity} is unavailable: MediaPipe would "
            "download its pose model at first use, and only model_complexity=1 is bundled with the "
            "mediapipe wheel (so works offline). Use model_complexity=1."
        )


def _landmark_points(landmarks: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, points)``: raw (N, 3) normalised ``x, y, visibility`` (1 where the model gives none),
    and the same with points outside the image set missing (0, 0, 0)."""
    raw = np.array(
        [(lm.x, lm.y, lm.visibility if lm.HasField("visibility") else 1.0) for lm in landmarks.landmark], dtype=np.float64
    ).reshape(-1, 3)
    inside = (raw[:, 0] >= 0) & (raw[:, 0] <= 1) & (raw[:, 1] >= 0) & (raw[:, 1] <= 1)
    points = np.where(inside[:, None], raw, 0.0)
    return raw, points


def pose_to_coco18(blazepose: np.ndarray, visibility_threshold: float) -> np.ndarray:
    """33 BlazePose points (normalised, visibility; off-image ones already missing) to COCO-18; a
    joint is missing unless its visibility exceeds the threshold; the neck is the midpoint of the
    two shoulders when both are found."""
    body = np.zeros((BODY_POINTS, 3))
    found = blazepose[:, 2] > visibility_threshold
    for joint, index in _COCO18_FROM_BLAZEPOSE.items():
        if found[index]:
            body[joint] = blazepose[index]
    if found[_LEFT_SHOULDER] and found[_RIGHT_SHOULDER]:
        left, right = blazepose[_LEFT_SHOULDER], blazepose[_RIGHT_SHOULDER]
        body[_NECK] = ((left[0] + right[0]) / 2, (left[1] + right[1]) / 2, min(left[2], right[2]))
    return body


def _face_connections() -> list[tuple[tuple[int, int], tuple[int, int, int]]]:
    """Mesh edges of the reference face drawing with their colours, in its drawing order."""
    mesh = _import_solutions().face_mesh_connections
    styled: dict[tuple[int, int], tuple[int, int, int]] = {}
    for edges, color in (
        (mesh.FACEMESH_FACE_OVAL, _HEAD), (mesh.FACEMESH_LEFT_EYE, _LEFT_EYE),
        (mesh.FACEMESH_LEFT_EYEBROW, _LEFT_EYEBROW), (mesh.FACEMESH_RIGHT_EYE, _RIGHT_EYE),
        (mesh.FACEMESH_RIGHT_EYEBROW, _RIGHT_EYEBROW), (mesh.FACEMESH_LIPS, _MOUTH),
    ):  # fmt: skip
        for edge in edges:
            styled[edge] = color
    return list(styled.items())


def draw_face_mesh(canvas: np.ndarray, faces: Sequence[np.ndarray]) -> np.ndarray:
    """The "MediaPipe face" drawing (in place, RGB): each styled mesh edge whose ends are in the image
    as a 2 px line, then a 4x4 square on each pupil."""
    height, width = canvas.shape[:2]
    connections = _face_connections()
    for face in faces:
        found = face[:, 2] > 0
        # MediaPipe's pixel mapping: floor, clamped to the last row/column.
        xs = np.minimum(np.floor(face[:, 0] * width), width - 1).astype(int)
        ys = np.minimum(np.floor(face[:, 1] * height), height - 1).astype(int)
        for (a, b), color in connections:
            if found[a] and found[b]:
                cv2.line(canvas, (int(xs[a]), int(ys[a])), (int(xs[b]), int(ys[b])), color, _FACE_LINE_THICKNESS)
        for index, color in _PUPILS:
            if index >= len(face) or not found[index]:
                continue
            x, y = face[index, :2]
            if x >= 1.0 or y >= 1.0:
                continue
            px, py, half = int(width * x), int(height * y), _PUPIL_HALF_WIDTH
            canvas[py - half : py + half, px - half : px + half, :] = color
    return canvas


class _MediaPipeAnnotator(Annotator):
    """Runs one lazily built MediaPipe solution graph per process over the images, one at a time
    (MediaPipe has no batched API), in static-image mode so that images never influence each other."""

    weights = Weights(license="Apache-2.0 (Google MediaPipe, models bundled in the mediapipe wheel)", format="bundled", package="mediapipe")
    data_kind = POSE
    map_kind = "pose"

    def __init__(self, config: AnnotatorConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self._graph: Any = None
        self._graph_pid: int | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_graph=None, _graph_pid=None)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _build_graph(self) -> Any:
        raise NotImplementedError

    def _graph_for_this_process(self) -> Any:
        if self._graph is None or self._graph_pid != os.getpid():
            with quiet_native_logs():
                graph = self._build_graph()
                # Its calculators open, and log, on the graph's own threads: one run on a blank image
                # waits for them (static-image mode: no state carries over to the next image).
                graph.process(np.zeros((64, 64, 3), np.uint8))
            self._graph, self._graph_pid = graph, os.getpid()
        return self._graph

    def load(self) -> Self:
        """Build this process's MediaPipe graph now (otherwise done on the first call)."""
        with self._lock:
            self._graph_for_this_process()
        return self

    def close(self) -> None:
        """Release the MediaPipe graph now (it is rebuilt on the next call)."""
        with self._lock:
            if self._graph is not None and self._graph_pid == os.getpid():
                with quiet_native_logs():
                    self._graph.close()
            self._graph = self._graph_pid = None

    def _annotate(self, images: list[np.ndarray]) -> list[Annotation]:
        with self._lock:  # a graph runs one image at a time
            graph = self._graph_for_this_process()
            with quiet_native_logs():
                results = [graph.process(np.ascontiguousarray(image)) for image in images]
            return [self._annotate_one(result, image.shape[0], image.shape[1]) for result, image in zip(results, images)]

    def _annotate_one(self, results: Any, height: int, width: int) -> Annotation:
        raise NotImplementedError


@dataclass(frozen=True)
class MediaPipePoseConfig(AnnotatorConfig):
    model_complexity: int = param(1, "BlazePose landmark model: only 1 is bundled (0 and 2 need a download)", choices=(0, 1, 2))
    min_detection_confidence: float = param(0.5, "minimum person-detector confidence", ge=0.0, le=1.0)
    visibility_threshold: float = param(0.5, "a joint counts as found only above this visibility", ge=0.0, le=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_pose_complexity(self, self.model_complexity)


class MediaPipePose(_MediaPipeAnnotator):
    """Body pose from MediaPipe's BlazePose, as an OpenPose COCO-18 skeleton.

    Legacy MediaPipe pose finds at most ONE person per image; for group photos and crowds use
    ``openpose``, which finds every person."""

    name = "mediapipe_pose"
    description = "MediaPipe body pose as an OpenPose skeleton (one person per image; use openpose for crowds), no weights to fetch"
    Config = MediaPipePoseConfig
    config: MediaPipePoseConfig

    def _build_graph(self) -> Any:
        c = self.config
        return _import_solutions().pose.Pose(
            static_image_mode=True, model_complexity=c.model_complexity, min_detection_confidence=c.min_detection_confidence
        )

    def _annotate_one(self, results: Any, height: int, width: int) -> Annotation:
        pose = PoseResult(width, height)
        if results.pose_landmarks is not None:
            body = pose_to_coco18(_landmark_points(results.pose_landmarks)[1], self.config.visibility_threshold)
            if (body[:, 2] > 0).any():
                pose.people.append(Person(body=body))
        return Annotation(pose.draw(), pose.to_json())


@dataclass(frozen=True)
class MediaPipeHandsConfig(AnnotatorConfig):
    max_num_hands: int = param(2, "most hands to find per image", ge=1, le=16)
    model_complexity: int = param(1, "hand landmark model: 0 (lite) or 1 (full), both bundled", choices=(0, 1))
    min_detection_confidence: float = param(0.5, "minimum palm-detector confidence", ge=0.0, le=1.0)


class MediaPipeHands(_MediaPipeAnnotator):
    """21-point hands from MediaPipe Hands, drawn as OpenPose hands. Each hand is its own entry in
    ``people``. MediaPipe labels handedness as if the photo were mirrored; it is swapped here, so
    ``hand_left_keypoints_2d`` is the person's own left hand, as in OpenPose."""

    name = "mediapipe_hands"
    description = "MediaPipe hands (21 points each) drawn as OpenPose hands, no weights to fetch"
    Config = MediaPipeHandsConfig
    config: MediaPipeHandsConfig

    def _build_graph(self) -> Any:
        c = self.config
        return _import_solutions().hands.Hands(
            static_image_mode=True, max_num_hands=c.max_num_hands, model_complexity=c.model_complexity,
            min_detection_confidence=c.min_detection_confidence,
        )  # fmt: skip

    def _annotate_one(self, results: Any, height: int, width: int) -> Annotation:
        pose = PoseResult(width, height)
        for landmarks, handedness in zip(results.multi_hand_landmarks or [], results.multi_handedness or []):
            points = _landmark_points(landmarks)[1]
            if handedness.classification[0].label == "Right":  # mirrored label: the person's left hand
                pose.people.append(Person(left_hand=points))
            else:
                pose.people.append(Person(right_hand=points))
        return Annotation(pose.draw(), pose.to_json())


@dataclass(frozen=True)
class MediaPipeFaceConfig(AnnotatorConfig):
    max_faces: int = param(1, "most faces to find per image", ge=1, le=64)
    min_confidence: float = param(0.5, "minimum face-detector confidence", ge=0.01, le=1.0)
    min_face_size: int = param(64, "drop faces whose landmark box is smaller than this many pixels on its short side (0: keep all)", ge=0)


class MediaPipeFace(_MediaPipeAnnotator):
    """Face mesh (478 refined landmarks) drawn in the "MediaPipe face" ControlNet convention."""

    name = "mediapipe_face"
    description = "MediaPipe face mesh in the ControlNet 'MediaPipe face' drawing (oval, eyes, brows, lips, pupils), no weights to fetch"
    Config = MediaPipeFaceConfig
    config: MediaPipeFaceConfig

    def _build_graph(self) -> Any:
        c = self.config
        return _import_solutions().face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=c.max_faces, refine_landmarks=True, min_detection_confidence=c.min_confidence
        )

    def _large_enough(self, raw: np.ndarray, height: int, width: int) -> bool:
        """The reference size filter: short side of the box around all landmarks (even off-image ones)."""
        if self.config.min_face_size <= 0:
            return True
        size = min((raw[:, 0].max() - raw[:, 0].min()) * width, (raw[:, 1].max() - raw[:, 1].min()) * height)
        return bool(size >= self.config.min_face_size)

    def _annotate_one(self, results: Any, height: int, width: int) -> Annotation:
        pose = PoseResult(width, height)
        for landmarks in results.multi_face_landmarks or []:
            raw, points = _landmark_points(landmarks)
            if self._large_enough(raw, height, width):
                pose.people.append(Person(face=points))
        canvas = draw_face_mesh(np.zeros((height, width, 3), np.uint8), [p.face for p in pose.people if p.face is not None])
        return Annotation(canvas, pose.to_json())


@dataclass(frozen=True)
class MediaPipeFullConfig(MediaPipePoseConfig):
    """Holistic runs the same BlazePose body model, with the same options."""


class MediaPipeFull(_MediaPipeAnnotator):
    """MediaPipe Holistic: body, both hands and face mesh of one person. Body and hands are drawn as
    OpenPose (v1.1), the face in the "MediaPipe face" convention on top. Like ``mediapipe_pose`` it
    finds at most ONE person per image; use ``openpose_hand`` for several people."""

    name = "mediapipe_full"
    description = "MediaPipe holistic: OpenPose body + hands with the MediaPipe face mesh (one person per image; use openpose for crowds)"
    Config = MediaPipeFullConfig
    config: MediaPipeFullConfig

    def _build_graph(self) -> Any:
        c = self.config
        return _import_solutions().holistic.Holistic(
            static_image_mode=True, model_complexity=c.model_complexity, refine_face_landmarks=True,
            min_detection_confidence=c.min_detection_confidence,
        )  # fmt: skip

    def _annotate_one(self, results: Any, height: int, width: int) -> Annotation:
        pose = PoseResult(width, height)
        if results.pose_landmarks is not None:
            person = Person(body=pose_to_coco18(_landmark_points(results.pose_landmarks)[1], self.config.visibility_threshold))
            # Holistic names hands from the person's own point of view (it crops them from the pose).
            if results.left_hand_landmarks is not None:
                person.left_hand = _landmark_points(results.left_hand_landmarks)[1]
            if results.right_hand_landmarks is not None:
                person.right_hand = _landmark_points(results.right_hand_landmarks)[1]
            if results.face_landmarks is not None:
                person.face = _landmark_points(results.face_landmarks)[1]
            if any(part is not None and (part[:, 2] > 0).any() for part in (person.body, person.left_hand, person.right_hand, person.face)):
                pose.people.append(person)
        canvas = pose.draw(face=False)
        canvas = draw_face_mesh(canvas, [p.face for p in pose.people if p.face is not None])
        return Annotation(canvas, pose.to_json())


@dataclass(frozen=True)
class PersonMaskConfig(AnnotatorConfig):
    model_selection: int = param(0, "0: general model (256x256), 1: landscape model (144x256)", choices=(0, 1))
    threshold: float = param(0.5, "person where the mask probability exceeds this", ge=0.0, le=1.0)
    soft: bool = param(False, "keep the probability as grey levels instead of thresholding")


class PersonMask(_MediaPipeAnnotator):
    """Selfie segmentation: people in white on black (no keypoints). Trained on people close to the
    camera; on photographs without people it may still mark foreground objects (animals, food)."""

    name = "person_mask"
    description = "MediaPipe selfie segmentation: person mask, white on black, no weights to fetch"
    Config = PersonMaskConfig
    config: PersonMaskConfig
    grayscale = True
    data_kind = None
    map_kind = "mask"

    def _build_graph(self) -> Any:
        return _import_solutions().selfie_segmentation.SelfieSegmentation(model_selection=self.config.model_selection)

    def _annotate_one(self, results: Any, height: int, width: int) -> Annotation:
        mask = np.asarray(results.segmentation_mask, dtype=np.float32)
        if self.config.soft:
            gray = np.round(mask.clip(0.0, 1.0) * 255).astype(np.uint8)
        else:
            gray = np.where(mask > self.config.threshold, np.uint8(255), np.uint8(0))
        return Annotation(gray)

