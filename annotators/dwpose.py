"""DWPose whole-body keypoints drawn as OpenPose skeletons: sd-webui-controlnet's ``dw_openpose_full``,
and ``dw_openpose``, the same detection drawn (and stored) as the body alone.

Method: Z. Yang, A. Zeng, C. Yuan and Y. Li, "Effective Whole-body Pose Estimation with Two-stages
Distillation" (ICCV 2023 workshops). A top-down pipeline: the YOLOX-L person detector (Z. Ge et al.,
"YOLOX: Exceeding YOLO Series in 2021"), then the distilled RTMPose-L whole-body model on each person,
whose SimCC head (Y. Li et al., ECCV 2022) classifies the x and y of each of the 133 COCO-WholeBody
keypoints into half-pixel bins of a 288x384 crop.
Weights: ``yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx`` as published in ``yzd-v/DWPose`` on the Hugging
Face Hub (Apache-2.0; where sd-webui-controlnet downloads them from), run with onnxruntime on the CPU
or, with onnxruntime-gpu, on CUDA.

Each step is sd-webui-controlnet's (``annotator/openpose/{wholebody,cv_ox_det,cv_ox_pose}.py`` and its
``dw_openpose_full`` preprocessor entry):

1. the image is padded at the bottom and right to multiples of 64, repeating its edge (the padding of
   ``resize_image_with_pad``; resizing is the caller's, as for every annotator here), and the map is
   cropped back at the end;
2. detector input: the image scaled by r = min(640/H, 640/W) (bilinear) into the top-left corner of a
   640x640 canvas of grey 114, raw 0..255 RGB values;
3. YOLOX decoding (grid offset and log size per anchor at strides 8, 16 and 32; score = objectness x
   class score), greedy NMS per class (scores above 0.1, IoU above 0.45 suppressed, with the "+1"
   pixel convention for areas), then the persons scoring above ``person_threshold``. When nothing at
   all is detected there is no one; when objects but no person are, the reference poses the whole
   image as one person (``whole_image_fallback``);
4. per person, the box grown by 1.25 and widened or heightened to 3:4, cut out by an affine warp
   (bilinear, black outside the image) to 288x384 and normalised with the ImageNet mean and std;
5. SimCC decoding: per keypoint, the first maximum of each axis's bins; score = the smaller of the
   two maxima; bin / 2 mapped from the crop back to the image;
6. a neck at the shoulders' midpoint (found when both shoulders score above the keypoint threshold),
   and the 17 COCO body points reordered into OpenPose's COCO-18;
7. points scoring below ``keypoint_threshold`` are missing. Each person is drawn in turn, body, hands
   and face, in pixel coordinates (:func:`annotators.render.draw_people_in_turn`).

Keypoints go out in OpenPose JSON form (``Annotation.data``, pixels): 18 body points (24 with
``feet``: then the six COCO-WholeBody foot points, left big toe, small toe, heel, then right, follow in
OpenPose BODY_25's foot order; they are stored, not drawn), 21 per hand, and 70 face points (DWPose's
68 with the two eyes of the body appended, as sd-webui does). A found point's confidence is its SimCC
score kept inside (0, 1]; the neck's is the smaller shoulder score. Keypoints of a person overlapping
the bottom or right padding may lie outside the image.

The onnxruntime sessions are made in ``load`` (or on the first call), never in the constructor, and
are not pickled. On the CPU each image runs alone (its person crops together, as the reference's
onnxruntime branch), so a map never depends on its batch mates; onnxruntime's thread pool follows
``OMP_NUM_THREADS`` when it is set, like torch's. On CUDA the crops of a whole call share runs of
``batch_size``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np

from annotators.base import Annotation, Annotator, AnnotatorConfig, param
from annotators.data import POSE
from annotators.render import BODY_POINTS, Person, PoseResult, draw_people_in_turn
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "DWOpenPose",
    "DWOpenPoseFull",
    "DWPoseConfig",
    "box_center_scale",
    "crop_person",
    "decode_detections",
    "decode_simcc",
    "detector_input",
    "multiclass_nms",
    "nms",
    "pad_to_64",
    "people_from_keypoints",
    "person_boxes",
    "pose_input",
    "to_image_coordinates",
    "to_openpose_order",
]

DETECTOR_SIZE = 640
POSE_WIDTH, POSE_HEIGHT = 288, 384
SIMCC_SPLIT_RATIO = 2.0
_STRIDES = (8, 16, 32)
_NUM_CLASSES = 80
_PAD_VALUE = 114
_NMS_IOU = 0.45
_NMS_SCORE = 0.1
_BOX_PADDING = 1.25
_PERSON_CLASS = 0
# ImageNet statistics on RGB 0..255, as the RTMPose export expects.
_MEAN = np.array([123.675, 116.28, 103.53])
_STD = np.array([58.395, 57.12, 57.375])
# COCO-WholeBody (133 points) with the neck inserted at 17: 0-17 body, 18-23 feet, 24-91 face,
# 92-112 left hand, 113-133 right hand.
_NECK_INSERT = 17
_MMPOSE_TO_OPENPOSE_SOURCES = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)
_MMPOSE_TO_OPENPOSE_TARGETS = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)
_FEET = slice(18, 24)
_FACE = slice(24, 92)
_LEFT_HAND = slice(92, 113)
_RIGHT_HAND = slice(113, 134)
_RIGHT_EYE, _LEFT_EYE = 14, 15
_LEFT_SHOULDER, _RIGHT_SHOULDER = 5, 6  # COCO order, before the reordering
_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
_DETECTOR, _POSE = 0, 1


def pad_to_64(image: np.ndarray) -> np.ndarray:
    """The padding of sd-webui's ``resize_image_with_pad``: bottom and right edges repeated up to
    multiples of 64 (the image itself when it already is)."""
    height, width = image.shape[:2]
    bottom, right = -height % 64, -width % 64
    if not (bottom or right):
        return image
    return cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REPLICATE)


def detector_input(image: np.ndarray) -> tuple[np.ndarray, float]:
    """YOLOX's letterbox: ``(CHW float32 640x640 input, ratio)``; the image scaled by
    ``ratio = min(640/H, 640/W)`` (bilinear) in the top-left corner, grey 114 elsewhere, values 0..255."""
    height, width = image.shape[:2]
    ratio = min(DETECTOR_SIZE / height, DETECTOR_SIZE / width)
    new_width, new_height = int(width * ratio), int(height * ratio)
    canvas = np.full((DETECTOR_SIZE, DETECTOR_SIZE, 3), _PAD_VALUE, np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), ratio


@cache
def _anchors() -> tuple[np.ndarray, np.ndarray]:
    """Per anchor of the 640x640 input: its grid cell (x, y) and stride, strides 8, 16, 32 in turn,
    each grid row-major."""
    cells, strides = [], []
    for stride in _STRIDES:
        side = DETECTOR_SIZE // stride
        ys, xs = np.mgrid[0:side, 0:side]
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((side * side, 1), stride))
    return np.concatenate(cells), np.concatenate(strides)


def decode_detections(raw: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX output (8400, 85) to ``(boxes, scores)``: float32 (8400, 4) corner boxes in image pixels
    and (8400, 80) class scores (objectness x class probability), with the reference's dtypes."""
    cells, strides = _anchors()
    if raw.shape != (len(cells), 5 + _NUM_CLASSES):
        raise ValueError(f"expected a YOLOX output of shape ({len(cells)}, {5 + _NUM_CLASSES}) for a 640x640 input, got {raw.shape}")
    centers = ((raw[:, :2] + cells) * strides).astype(np.float32)
    sizes = (np.exp(raw[:, 2:4]) * strides).astype(np.float32)
    scores = raw[:, 4:5] * raw[:, 5:]
    boxes = np.concatenate([centers - sizes / np.float32(2), centers + sizes / np.float32(2)], axis=1)
    return boxes / np.float32(ratio), scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS in descending score order: indices kept. Areas count the end pixels ("+1"), and a
    box goes when its IoU with a kept one exceeds ``iou_threshold`` (float32, as the reference)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = np.maximum(np.float32(0), np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(np.float32(0), np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = width * height
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= np.float32(iou_threshold)]
    return keep


def multiclass_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = _NMS_IOU, score_threshold: float = _NMS_SCORE
) -> np.ndarray:
    """Per class, the boxes scoring above ``score_threshold`` after :func:`nms`: float64 rows
    ``x1, y1, x2, y2, score, class``, grouped by class in class order; (0, 6) when there are none."""
    rows = []
    for cls in range(scores.shape[1]):
        valid = scores[:, cls] > np.float32(score_threshold)
        if not valid.any():
            continue
        class_boxes, class_scores = boxes[valid], scores[valid, cls]
        keep = nms(class_boxes, class_scores, iou_threshold)
        rows.append(np.column_stack([class_boxes[keep], class_scores[keep], np.full(len(keep), float(cls))]).astype(np.float64))
    return np.concatenate(rows) if rows else np.zeros((0, 6))


def person_boxes(detections: np.ndarray, threshold: float) -> np.ndarray:
    """The (K, 4) float64 boxes of persons (class 0) scoring above ``threshold``."""
    chosen = (detections[:, 4] > threshold) & (detections[:, 5] == _PERSON_CLASS)
    return detections[chosen, :4]


def box_center_scale(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A corner box to ``(center, scale)``: the centre, and the size grown by 1.25 and then widened
    or heightened to the crop's 3:4 (the short side grows), float64."""
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([x1 + x2, y1 + y2]) * 0.5
    width, height = np.array([x2 - x1, y2 - y1]) * _BOX_PADDING
    aspect = POSE_WIDTH / POSE_HEIGHT
    scale = np.array([width, width / aspect]) if width > height * aspect else np.array([height * aspect, height])
    return center, scale


def _warp_matrix(center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The 2x3 affine map of the box onto the 288x384 crop, from three float32 point pairs as the
    reference builds them: centre -> crop centre, the point half a box width above it -> the point
    half a crop width above the crop centre, and a third at right angles to those."""

    def third(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        direction = a - b
        return b + np.array([-direction[1], direction[0]], dtype=a.dtype)

    src = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + np.array([0.0, scale[0] * -0.5])
    src[2] = third(src[0], src[1])
    dst = np.zeros((3, 2), np.float32)
    dst[0] = (POSE_WIDTH * 0.5, POSE_HEIGHT * 0.5)
    dst[1] = (POSE_WIDTH * 0.5, POSE_HEIGHT * 0.5 - POSE_WIDTH * 0.5)
    dst[2] = third(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def crop_person(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(crop, warp, center, scale)``: the 384x288x3 uint8 crop of one person's box (bilinear, black
    outside the image), the 2x3 warp used, and the box centre and 3:4 scale that decoding needs."""
    center, scale = box_center_scale(box)
    warp = _warp_matrix(center, scale)
    crop = cv2.warpAffine(image, warp, (POSE_WIDTH, POSE_HEIGHT), flags=cv2.INTER_LINEAR)
    return crop, warp, center, scale


def pose_input(crops: list[np.ndarray]) -> np.ndarray:
    """Crops to the pose model's (N, 3, 384, 288) float32 input: ImageNet-normalised in float64."""
    normalised = [(crop - _MEAN) / _STD for crop in crops]
    return np.stack(normalised).transpose(0, 3, 1, 2).astype(np.float32)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SimCC outputs (N, K, 576) and (N, K, 768) to ``(locations, scores)``: float32 (N, K, 2) crop
    pixels (the first maximum bin of each axis / 2; -0.5 where the score is not positive) and (N, K)
    scores, the smaller of the two maxima."""
    locations = np.stack([simcc_x.argmax(axis=2), simcc_y.argmax(axis=2)], axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(axis=2), simcc_y.max(axis=2))
    locations[scores <= 0] = -1
    return locations / np.float32(SIMCC_SPLIT_RATIO), scores


def to_image_coordinates(locations: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Crop pixels (K, 2) of one person to image pixels (float64), through the box's centre and scale."""
    return locations / np.array([POSE_WIDTH, POSE_HEIGHT]) * scale + center - scale / 2


def to_openpose_order(keypoints: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """(N, 133, 2) image keypoints and (N, 133) scores to (N, 134, 3) ``x, y, score`` rows: the neck
    (the shoulders' midpoint, scored 1 when both shoulders score above ``threshold``, else 0)
    inserted at 17, and the body reordered from COCO to OpenPose's COCO-18."""
    info = np.concatenate([keypoints, scores[..., None]], axis=-1)
    neck = info[:, [_LEFT_SHOULDER, _RIGHT_SHOULDER]].mean(axis=1)
    both = (info[:, _LEFT_SHOULDER, 2] > threshold) & (info[:, _RIGHT_SHOULDER, 2] > threshold)
    neck[:, 2] = both.astype(np.float64)
    ordered = np.insert(info, _NECK_INSERT, neck, axis=1)
    ordered[:, list(_MMPOSE_TO_OPENPOSE_TARGETS)] = ordered[:, list(_MMPOSE_TO_OPENPOSE_SOURCES)]
    return ordered


def _part(rows: np.ndarray, threshold: float, confidence: np.ndarray) -> np.ndarray:
    """``x, y, confidence`` rows with the points scoring below ``threshold`` missing (0, 0, 0)."""
    found = rows[:, 2] >= threshold
    part = np.zeros((len(rows), 3))
    part[found, :2] = rows[found, :2]
    part[found, 2] = np.clip(confidence[found], 1e-3, 1.0)
    return part


def people_from_keypoints(
    ordered: np.ndarray, neck_confidence: np.ndarray, threshold: float, *, hands_and_face: bool, feet: bool
) -> list[Person]:
    """Each person of :func:`to_openpose_order`'s rows as a :class:`Person` in pixel coordinates:
    body (COCO-18, then the six foot points with ``feet``), and with ``hands_and_face`` the hands and
    the face (68 points plus the body's two eyes), each None when none of its points is found."""
    people = []
    for rows, neck in zip(ordered, neck_confidence):
        confidence = rows[:, 2].copy()
        confidence[1] = neck
        whole = _part(rows, threshold, confidence)
        body_rows = np.r_[0:BODY_POINTS, _FEET] if feet else np.s_[0:BODY_POINTS]
        person = Person(body=whole[body_rows])
        if hands_and_face:
            if (whole[_LEFT_HAND, 2] > 0).any():
                person.left_hand = whole[_LEFT_HAND]
            if (whole[_RIGHT_HAND, 2] > 0).any():
                person.right_hand = whole[_RIGHT_HAND]
            if (whole[_FACE, 2] > 0).any():
                person.face = np.concatenate([whole[_FACE], whole[[_RIGHT_EYE, _LEFT_EYE]]])
        people.append(person)
    return people


def _intra_op_threads() -> int:
    """onnxruntime's CPU threads: ``OMP_NUM_THREADS`` when set (the builder's workers set it to 1),
    else 0, onnxruntime's own default (one per physical core)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class DWPoseConfig(AnnotatorConfig):
    weights: str | None = param(
        None, "folder holding yolox_l.onnx and dw-ll_ucoco_384.onnx (default: $CN_ANNOTATE_WEIGHTS, then the Hub cache of yzd-v/DWPose)", runtime=True
    )
    device: str = param("cpu", "onnxruntime device: cpu, cuda or cuda:N (CUDA needs the onnxruntime-gpu package)", runtime=True)
    batch_size: int = param(8, "person crops per pose-model run on CUDA (on the CPU each image runs alone)", ge=1, runtime=True)
    person_threshold: float = param(0.3, "minimum detector score of a person", ge=0.0, le=1.0)
    keypoint_threshold: float = param(0.3, "minimum SimCC score of a keypoint", gt=0.0, le=1.0)
    feet: bool = param(False, "also store the six foot keypoints after the 18 body points (they are not drawn)")
    whole_image_fallback: bool = param(
        True, "when the detector finds objects but no person, pose the whole image as one person (as sd-webui does)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _DEVICE_PATTERN.match(self.device):
            raise ValueError(f"{type(self).__name__}.device={self.device!r} is invalid: must be cpu, cuda or cuda:N")


class _DWPose(Annotator):
    """The DWPose pipeline on two onnxruntime sessions; subclasses choose the parts drawn and stored."""

    Config = DWPoseConfig
    map_kind = "pose"
    weights = Weights(
        license="Apache-2.0 (yzd-v/DWPose: DWPose and YOLOX-L)",
        files=(WeightFile("yolox_l.onnx"), WeightFile("dw-ll_ucoco_384.onnx")),
        format="onnx",
        repo_id="yzd-v/DWPose",
    )
    data_kind = POSE
    hands_and_face: ClassVar[bool]

    config: DWPoseConfig

    def __init__(self, config: DWPoseConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self._sessions: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sessions": None}  # sessions do not pickle; each process makes its own

    @property
    def preferred_batch_size(self) -> int:
        return 1 if self.config.device == "cpu" else self.config.batch_size

    def _providers(self) -> list[Any]:
        import onnxruntime as ort

        if self.config.device == "cpu":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"{self.name}: device {self.config.device!r} needs onnxruntime with CUDA (the onnxruntime-gpu package); "
                f"this onnxruntime offers {', '.join(available)}"
            )
        _, _, index = self.config.device.partition(":")
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]

    def _session(self, path: Path, outputs: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = _intra_op_threads()
        providers = self._providers()
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # noqa: BLE001 (onnxruntime's error types, InvalidProtobuf, InvalidGraph, Fail..., derive from Exception)
            detail = (str(err).strip().splitlines() or [""])[0].replace(str(path), path.name)
            raise ValueError(f"{path.name}: cannot load the ONNX graph ({type(err).__name__}: {detail})") from None
        found = (len(session.get_inputs()), len(session.get_outputs()))
        if found != (1, outputs):
            raise ValueError(f"{path.name}: expected an ONNX graph with 1 input and {outputs} output(s), got {found[0]} and {found[1]}")
        return session

    def load(self) -> Self:
        """Find the two ONNX graphs and make their onnxruntime sessions now (otherwise on first call)."""
        if self._sessions is None:
            if self.config.weights and Path(self.config.weights).is_file():
                names = " and ".join(f.name for f in self.weights.files)
                raise ValueError(f"{self.name}: weights= must be a folder holding {names}, not one file")
            detector, pose = self.weights.locate(self.config.weights)
            self._sessions = (self._session(detector, 1), self._session(pose, 2))
        return self

    def close(self) -> None:
        self._sessions = None

    @staticmethod
    def _run(session: Any, batch: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {session.get_inputs()[0].name: batch})

    def _crops_per_run(self, session: Any, count: int) -> int:
        """Crops per pose-model run: all ``count`` on the CPU (one image's crops), ``batch_size`` on
        CUDA, and never more than a graph exported with a fixed batch takes."""
        wanted = count if self.config.device == "cpu" else self.config.batch_size
        fixed = session.get_inputs()[0].shape[0]
        return min(wanted, fixed) if isinstance(fixed, int) and fixed > 0 else wanted

    def detect_people(self, padded: np.ndarray) -> np.ndarray | None:
        """Person boxes (K, 4) in the padded image, or None when the detector finds nothing at all.
        One image per run: YOLOX is exported with a batch of one."""
        detector = self._loaded()[_DETECTOR]
        blob, ratio = detector_input(padded)
        (raw,) = self._run(detector, blob[None])
        boxes, scores = decode_detections(raw[0], ratio)
        detections = multiclass_nms(boxes, scores)
        if not len(detections):
            return None
        people = person_boxes(detections, self.config.person_threshold)
        if not len(people) and self.config.whole_image_fallback:
            height, width = padded.shape[:2]
            people = np.array([[0.0, 0.0, float(width), float(height)]])
        return people

    def simcc(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The pose model's (N, 133, 576) and (N, 133, 768) outputs for crops of any number of images,
        in runs of :meth:`_crops_per_run` crops."""
        pose = self._loaded()[_POSE]
        step = self._crops_per_run(pose, len(crops))
        outputs = [self._run(pose, pose_input(crops[start : start + step])) for start in range(0, len(crops), step)]
        simcc_x, simcc_y = (np.concatenate([o[i] for o in outputs]) for i in range(2))
        expected = (2 * POSE_WIDTH, 2 * POSE_HEIGHT)
        if (simcc_x.shape[-1], simcc_y.shape[-1]) != expected:
            raise ValueError(f"expected SimCC outputs of {expected[0]} and {expected[1]} bins, got {simcc_x.shape[-1]} and {simcc_y.shape[-1]}")
        return simcc_x, simcc_y

    def _loaded(self) -> tuple[Any, Any]:
        self.load()
        assert self._sessions is not None
        return self._sessions

    def _annotate(self, images: list[np.ndarray]) -> list[Annotation]:
        padded = [pad_to_64(image) for image in images]
        if self.config.device == "cpu":
            # Image by image, start to finish: its crops run together and nothing waits in memory.
            people = [self.keypoints([image])[0] for image in padded]
        else:
            people = self.keypoints(padded)
        return [self._result(image, padded_image, found) for image, padded_image, found in zip(images, padded, people)]

    def keypoints(self, padded: list[np.ndarray]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Per padded image, per person found, the (133, 2) image keypoints and (133,) scores; the
        crops of all the images share the pose model's runs."""
        jobs = []  # (image index, center, scale, crop) per person
        for index, image in enumerate(padded):
            boxes = self.detect_people(image)
            for box in boxes if boxes is not None else ():
                crop, _, center, scale = crop_person(image, box)
                jobs.append((index, center, scale, crop))
        found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in padded]
        if jobs:
            locations, scores = decode_simcc(*self.simcc([job[3] for job in jobs]))
            for (index, center, scale, _), location, score in zip(jobs, locations, scores):
                found[index].append((to_image_coordinates(location, center, scale), score))
        return found

    def _result(self, image: np.ndarray, padded: np.ndarray, people: list[tuple[np.ndarray, np.ndarray]]) -> Annotation:
        height, width = image.shape[:2]
        threshold = self.config.keypoint_threshold
        persons: list[Person] = []
        if people:
            keypoints = np.stack([p[0] for p in people])
            scores = np.stack([p[1] for p in people])
            ordered = to_openpose_order(keypoints, scores, threshold)
            neck = np.minimum(scores[:, _LEFT_SHOULDER], scores[:, _RIGHT_SHOULDER])
            persons = people_from_keypoints(ordered, neck, threshold, hands_and_face=self.hands_and_face, feet=self.config.feet)
        canvas = np.zeros_like(padded)
        canvas = draw_people_in_turn(canvas, persons, hands=self.hands_and_face, face=self.hands_and_face, scale=(1.0, 1.0))
        size = np.array([width, height, 1.0])
        normalised = [
            Person(*(None if part is None else part / size for part in (p.body, p.left_hand, p.right_hand, p.face))) for p in persons
        ]
        return Annotation(np.ascontiguousarray(canvas[:height, :width]), PoseResult(width, height, normalised).to_json())


class DWOpenPoseFull(_DWPose):
    name = "dw_openpose_full"
    description = "DWPose whole body (body, hands, face) drawn as OpenPose + OpenPose JSON keypoints; YOLOX-L and RTMPose ONNX"
    hands_and_face = True


class DWOpenPose(_DWPose):
    name = "dw_openpose"
    description = "DWPose body skeleton (COCO-18, multi-person) drawn as OpenPose + OpenPose JSON keypoints; YOLOX-L and RTMPose ONNX"
    hands_and_face = False
