"""Shared pose result type and the ControlNet v1.1 OpenPose drawing, used by every pose annotator.

Origin: the OpenPose skeleton convention (Z. Cao et al., "Realtime Multi-Person 2D Pose Estimation
using Part Affinity Fields", CVPR 2017) as drawn by ControlNet v1.1 (``annotator/openpose/util.py``):
limbs as filled ellipses, the canvas dimmed to 60 %, then joint dots; hands as HSV-coloured edges
with red dots; faces as white dots. No weights. sd-webui-controlnet draws the same shapes person by
person, with each limb in 60 % of its colour instead of dimming the canvas
(:func:`draw_people_in_turn`).

Every pose annotator returns a :class:`PoseResult` serialised to the OpenPose JSON form
(``people[].pose_keypoints_2d`` ..., ``canvas_width``, ``canvas_height``) in ``Annotation.data``.
Keypoints there are in pixels, as OpenPose writes them, each as ``x, y, confidence``; a point that was
not found is ``0, 0, 0`` and a part that was not detected at all (e.g. no hand found) is an empty list.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

__all__ = [
    "BODY_COLORS",
    "BODY_LIMBS",
    "COCO18_NAMES",
    "HAND_EDGES",
    "Person",
    "PoseResult",
    "draw_body",
    "draw_faces",
    "draw_hands",
    "draw_people_in_turn",
]

#: OpenPose's COCO-18 body order (also the JSON ``pose_keypoints_2d`` order).
COCO18_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip

#: Limbs as pairs of COCO-18 indices. Only the first 17 are drawn (the last two, ear-to-shoulder,
#: are used by the OpenPose part-affinity assembly but never rendered by ControlNet).
BODY_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip
_DRAWN_LIMBS = 17

#: One colour per joint (and per limb, by index), in the order ControlNet draws them.
BODY_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip

#: The 20 hand bones of the 21-point OpenPose/MediaPipe hand: four per finger from the wrist.
HAND_EDGES: tuple[tuple[int, int], ...] = tuple(
    edge for finger in range(5) for edge in ((0 if j == 0 else 4 * finger + j, 4 * finger + j + 1) for j in range(4))
)
# Float colours as the reference passes them (OpenCV rounds them when drawing).
_HAND_EDGE_COLORS: tuple[tuple[float, float, float], ...] = tuple(
    tuple(255.0 * c for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)) for i in range(len(HAND_EDGES))  # type: ignore[misc]
)
_STICK_WIDTH = 4
# The reference draws hand and face points only when their integer pixel coordinates exceed this
# (so points on row or column 0 are never drawn).
_EPS = 0.01

BODY_POINTS, HAND_POINTS = 18, 21


@dataclass
class Person:
    """One person's keypoints as (N, 3) arrays of normalised ``x/W, y/H, confidence``.

    A point with confidence 0 is missing; a part that was not detected is ``None``. ``body`` is in
    COCO-18 order, hands have 21 points, ``face`` holds whatever landmarks the detector gives.
    """

    body: np.ndarray | None = None
    left_hand: np.ndarray | None = None
    right_hand: np.ndarray | None = None
    face: np.ndarray | None = None

    def body_keypoint_count(self) -> int:
        return 0 if self.body is None else int((self.body[:, 2] > 0).sum())


def _part_to_json(part: np.ndarray | None, width: int, height: int) -> list[float]:
    if part is None:
        return []
    scaled = part * np.array([width, height, 1.0])
    scaled[part[:, 2] <= 0] = 0.0
    return [float(v) for v in scaled.reshape(-1)]


def _part_from_json(values: Sequence[float] | None, width: int, height: int) -> np.ndarray | None:
    if not values:
        return None
    if len(values) % 3:
        raise ValueError(f"keypoint list length {len(values)} is not a multiple of 3")
    return np.asarray(values, dtype=np.float64).reshape(-1, 3) / np.array([width, height, 1.0])


@dataclass
class PoseResult:
    """The people found in one image, with the canvas size; the one result type of the pose annotators."""

    width: int
    height: int
    people: list[Person] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The OpenPose JSON form (pixel coordinates), as stored in ``Annotation.data``."""
        w, h = self.width, self.height
        return {
            "people": [
                {
                    "pose_keypoints_2d": _part_to_json(p.body, w, h),
                    "face_keypoints_2d": _part_to_json(p.face, w, h),
                    "hand_left_keypoints_2d": _part_to_json(p.left_hand, w, h),
                    "hand_right_keypoints_2d": _part_to_json(p.right_hand, w, h),
                }
                for p in self.people
            ],
            "canvas_width": w,
            "canvas_height": h,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PoseResult:
        w, h = int(data["canvas_width"]), int(data["canvas_height"])
        people = [
            Person(
                body=_part_from_json(p.get("pose_keypoints_2d"), w, h),
                left_hand=_part_from_json(p.get("hand_left_keypoints_2d"), w, h),
                right_hand=_part_from_json(p.get("hand_right_keypoints_2d"), w, h),
                face=_part_from_json(p.get("face_keypoints_2d"), w, h),
            )
            for p in data["people"]
        ]
        return cls(w, h, people)

    def body_keypoint_count(self) -> int:
        """Body keypoints found, summed over people (what ``--min-keypoints`` compares against)."""
        return sum(p.body_keypoint_count() for p in self.people)

    def hands(self) -> list[np.ndarray]:
        """Detected hands in drawing order: each person's left hand, then right hand."""
        return [h for p in self.people for h in (p.left_hand, p.right_hand) if h is not None]

    def draw(self, body: bool = True, hands: bool = True, face: bool = True, canvas: np.ndarray | None = None) -> np.ndarray:
        """The v1.1 ``draw_pose`` map: all bodies, then all hands, then all faces, on black."""
        if canvas is None:
            canvas = np.zeros((self.height, self.width, 3), np.uint8)
        if body:
            canvas = draw_body(canvas, [p.body for p in self.people])
        if hands:
            canvas = draw_hands(canvas, self.hands())
        if face:
            canvas = draw_faces(canvas, [p.face for p in self.people if p.face is not None])
        return canvas


Scale = tuple[float, float]


def _scale(canvas: np.ndarray, scale: Scale | None) -> Scale:
    """Multipliers from keypoint coordinates to pixels: the canvas size for normalised keypoints,
    ``(1, 1)`` for keypoints already in pixels (as sd-webui draws DWPose's)."""
    return scale if scale is not None else (canvas.shape[1], canvas.shape[0])


def draw_body(
    canvas: np.ndarray, bodies: Sequence[np.ndarray | None], *, scale: Scale | None = None, dim_limbs: bool = False
) -> np.ndarray:
    """v1.1 ``draw_bodypose``: each limb (over all people) as a filled ellipse, the canvas times 0.6
    truncated to uint8, then a dot on each joint. Returns a new canvas.

    ``dim_limbs``: sd-webui's variant, which fills each limb in its colour times 0.6 (truncated) and
    leaves the rest of the canvas as it is (drawing in place). ``scale``: see :func:`_scale`."""
    width, height = _scale(canvas, scale)
    present = [b for b in bodies if b is not None]
    for limb_index in range(_DRAWN_LIMBS):
        a, b = BODY_LIMBS[limb_index]
        for body in present:
            if body[a, 2] <= 0 or body[b, 2] <= 0:
                continue
            xs = (body[a, 0] * float(width), body[b, 0] * float(width))
            ys = (body[a, 1] * float(height), body[b, 1] * float(height))
            mean_x, mean_y = np.mean(xs), np.mean(ys)
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly((int(mean_x), int(mean_y)), (int(length / 2), _STICK_WIDTH), int(angle), 0, 360, 1)
            color = BODY_COLORS[limb_index]
            cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color] if dim_limbs else color)
    if not dim_limbs:
        canvas = (canvas * 0.6).astype(np.uint8)
    for joint in range(BODY_POINTS):
        for body in present:
            if body[joint, 2] <= 0:
                continue
            x, y = int(body[joint, 0] * width), int(body[joint, 1] * height)
            cv2.circle(canvas, (x, y), 4, BODY_COLORS[joint], thickness=-1)
    return canvas


def _hand_pixels(hand: np.ndarray, width: int, height: int) -> list[tuple[int, int] | None]:
    pixels: list[tuple[int, int] | None] = []
    for x, y, confidence in hand:
        px, py = int(x * width), int(y * height)
        pixels.append((px, py) if confidence > 0 and px > _EPS and py > _EPS else None)
    return pixels


def draw_hands(canvas: np.ndarray, hands: Sequence[np.ndarray], *, scale: Scale | None = None) -> np.ndarray:
    """v1.1 ``draw_handpose`` (in place): per hand, its bones in HSV colours (2 px), then red dots."""
    width, height = _scale(canvas, scale)
    for hand in hands:
        pixels = _hand_pixels(hand, width, height)
        for edge_index, (a, b) in enumerate(HAND_EDGES):
            start, end = pixels[a], pixels[b]
            if start is not None and end is not None:
                cv2.line(canvas, start, end, _HAND_EDGE_COLORS[edge_index], thickness=2)
        for point in pixels:
            if point is not None:
                cv2.circle(canvas, point, 4, (0, 0, 255), thickness=-1)
    return canvas


def draw_faces(canvas: np.ndarray, faces: Sequence[np.ndarray], *, scale: Scale | None = None) -> np.ndarray:
    """v1.1 ``draw_facepose`` (in place): a white dot (radius 3) per face landmark."""
    width, height = _scale(canvas, scale)
    for face in faces:
        for x, y, confidence in face:
            px, py = int(x * width), int(y * height)
            if confidence > 0 and px > _EPS and py > _EPS:
                cv2.circle(canvas, (px, py), 3, (255, 255, 255), thickness=-1)
    return canvas


def draw_people_in_turn(
    canvas: np.ndarray,
    people: Sequence[Person],
    *,
    body: bool = True,
    hands: bool = True,
    face: bool = True,
    scale: Scale | None = None,
) -> np.ndarray:
    """sd-webui-controlnet's ``draw_poses``: person after person, its body (limbs in 60 % of their
    colour, the canvas not dimmed), left hand, right hand and face, in place."""
    for person in people:
        if body:
            canvas = draw_body(canvas, [person.body], scale=scale, dim_limbs=True)
        if hands:
            canvas = draw_hands(canvas, [h for h in (person.left_hand, person.right_hand) if h is not None], scale=scale)
        if face and person.face is not None:
            canvas = draw_faces(canvas, [person.face], scale=scale)
    return canvas
