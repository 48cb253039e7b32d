"""OpenPose body (and hand) keypoints drawn as the ControlNet "openpose" condition.

Method: Z. Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields"
(CVPR 2017) for bodies, T. Simon et al., "Hand Keypoint Detection in Single Images using Multiview
Bootstrapping" (CVPR 2017) for hands, in the ControlNet v1.1 pipeline (single 0.5x368 body scale, hand
boxes from the arms, four hand scales). Weights: ``body_pose_model.pth`` / ``hand_pose_model.pth``
from ``lllyasviel/Annotators``, converted from CMU's caffe models, which CMU licenses for
non-commercial research use only.

Output: the v1.1 skeleton map (see :mod:`annotators.render`) and the keypoints in OpenPose JSON form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np

from annotators.base import Annotation
from annotators.neural import NeuralAnnotator, NeuralConfig, param
from annotators.render import BODY_LIMBS, BODY_POINTS, HAND_POINTS, Person, PoseResult
from annotators.data import POSE
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch

__all__ = [
    "OpenPose",
    "OpenPoseHand",
    "assemble_people",
    "body_net_input",
    "find_body_peaks",
    "hand_boxes",
    "hand_net_input",
    "hand_peaks",
    "net_outputs_to_image",
    "smart_resize",
]

BOX_SIZE = 368
STRIDE = 8
PAD_VALUE = 128
BODY_SCALE = 0.5
HAND_SCALES = (0.5, 1.0, 1.5, 2.0)
HAND_HEATMAP_SIZE = 128
LIMB_SAMPLES = 10  # points sampled along a candidate limb when scoring it against the PAF

# PAF channel pair (x, y) of each limb in BODY_LIMBS.
PAF_CHANNELS: tuple[tuple[int, int], ...] = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
    (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)  # fmt: skip


def smart_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """The reference resize: INTER_AREA when the size shrinks (by summed sides), LANCZOS4 otherwise;
    arrays with other than 1 or 3 channels are resized one channel at a time."""
    height, width = max(1, int(height)), max(1, int(width))
    if x.ndim == 3 and x.shape[2] not in (1, 3):
        return np.stack([smart_resize(x[:, :, c], height, width) for c in range(x.shape[2])], axis=2)
    shrink = float(height + width) / float(x.shape[0] + x.shape[1]) < 1
    return cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)


def _pad_to_stride(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad bottom and right to a multiple of the network stride with the reference grey."""
    pad_bottom, pad_right = (-image.shape[0]) % STRIDE, (-image.shape[1]) % STRIDE
    padded = cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return padded, (pad_bottom, pad_right)


def _normalise(padded: np.ndarray) -> np.ndarray:
    """CHW float32 network input ``x/256 - 0.5``."""
    return np.ascontiguousarray(padded.transpose(2, 0, 1).astype(np.float32) / 256 - 0.5)


def body_net_input(bgr: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The body network input (CHW float32) for a BGR image at the reference scale, and its padding."""
    scale = BODY_SCALE * BOX_SIZE / bgr.shape[0]
    resized = smart_resize(bgr, bgr.shape[0] * scale, bgr.shape[1] * scale)
    padded, pad = _pad_to_stride(resized)
    return _normalise(padded), pad


def hand_net_input(bgr_crop: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The hand network input for an already blurred BGR crop resized to ``size`` x ``size``."""
    padded, pad = _pad_to_stride(smart_resize(bgr_crop, size, size))
    return _normalise(padded), pad


def net_outputs_to_image(raw: np.ndarray, pad: tuple[int, int], height: int, width: int) -> np.ndarray:
    """CHW network output at 1/8 scale to HWC at ``height`` x ``width``: x8 up, padding cropped, resized."""
    maps = smart_resize(raw.transpose(1, 2, 0), raw.shape[1] * STRIDE, raw.shape[2] * STRIDE)
    maps = maps[: maps.shape[0] - pad[0], : maps.shape[1] - pad[1]]
    return smart_resize(maps, height, width)


def find_body_peaks(heatmaps: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Per COCO-18 part, its peaks as rows ``(x, y, score, id)`` (ids numbered across parts): local
    maxima (4-neighbourhood, ties kept) of the sigma-3 smoothed heatmap above ``threshold``."""
    from scipy.ndimage import gaussian_filter

    peaks, next_id = [], 0
    for part in range(BODY_POINTS):
        heatmap = heatmaps[:, :, part].astype(np.float64)  # smoothing in float64, as the reference
        smooth = gaussian_filter(heatmap, sigma=3)
        # Neighbours beyond the border count as 0, as in the reference.
        padded = np.pad(smooth, 1)
        is_peak = (
            (smooth >= padded[:-2, 1:-1]) & (smooth >= padded[2:, 1:-1])
            & (smooth >= padded[1:-1, :-2]) & (smooth >= padded[1:-1, 2:]) & (smooth > threshold)
        )  # fmt: skip
        ys, xs = np.nonzero(is_peak)
        ids = np.arange(next_id, next_id + len(xs))
        peaks.append(np.column_stack([xs, ys, heatmap[ys, xs], ids]).astype(np.float64))
        next_id += len(xs)
    return peaks


def _limb_connections(
    peaks_a: np.ndarray, peaks_b: np.ndarray, paf_x: np.ndarray, paf_y: np.ndarray, image_height: int, threshold: float
) -> np.ndarray:
    """Greedy one-to-one matching of part-A peaks to part-B peaks for one limb, by the mean PAF
    alignment along the segment (with a penalty for segments longer than half the image height).
    Rows ``(id_a, id_b, score, index_a, index_b)``."""
    count_a, count_b = len(peaks_a), len(peaks_b)
    ia, ib = np.meshgrid(np.arange(count_a), np.arange(count_b), indexing="ij")
    ia, ib = ia.ravel(), ib.ravel()
    start, end = peaks_a[ia, :2], peaks_b[ib, :2]
    delta = end - start
    norm = np.maximum(np.sqrt(delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1]), 0.001)
    unit = delta / norm[:, None]
    # Sample points as np.linspace computes them for one pair, rounded half to even like round().
    steps = np.arange(LIMB_SAMPLES, dtype=np.float64)[:, None]
    xs = steps * (delta[:, 0] / (LIMB_SAMPLES - 1)) + start[:, 0]
    ys = steps * (delta[:, 1] / (LIMB_SAMPLES - 1)) + start[:, 1]
    xs[-1], ys[-1] = end[:, 0], end[:, 1]
    cols, rows = np.rint(xs).astype(np.intp), np.rint(ys).astype(np.intp)
    alignment = paf_x[rows, cols] * unit[:, 0] + paf_y[rows, cols] * unit[:, 1]
    total = np.zeros(len(ia))
    for sample in alignment:  # sequential sum, as the reference's built-in sum()
        total = total + sample
    score = total / LIMB_SAMPLES + np.minimum(0.5 * image_height / norm - 1, 0)
    accepted = ((alignment > threshold).sum(axis=0) > 0.8 * LIMB_SAMPLES) & (score > 0)
    candidates = sorted(
        ((int(ia[n]), int(ib[n]), float(score[n])) for n in np.flatnonzero(accepted)), key=lambda c: c[2], reverse=True
    )
    rows_out: list[tuple[float, float, float, int, int]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    for i, j, s in candidates:
        if i in used_a or j in used_b:
            continue
        rows_out.append((peaks_a[i, 3], peaks_b[j, 3], s, i, j))
        used_a.add(i)
        used_b.add(j)
        if len(rows_out) >= min(count_a, count_b):
            break
    return np.array(rows_out, dtype=np.float64).reshape(-1, 5)


def assemble_people(
    peaks: list[np.ndarray], pafs: np.ndarray, image_height: int, paf_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """The reference ``candidate`` (all peaks, rows ``x, y, score, id``) and ``subset`` (one row per
    person: 18 candidate ids or -1, total score, part count) from peaks and full-size PAFs."""
    candidate = np.concatenate(peaks, axis=0) if peaks else np.zeros((0, 4))
    subset = np.zeros((0, BODY_POINTS + 2))
    for limb, ((part_a, part_b), (cx, cy)) in enumerate(zip(BODY_LIMBS, PAF_CHANNELS)):
        if len(peaks[part_a]) == 0 or len(peaks[part_b]) == 0:
            continue
        connections = _limb_connections(peaks[part_a], peaks[part_b], pafs[:, :, cx], pafs[:, :, cy], image_height, paf_threshold)
        for id_a, id_b, score, _, _ in connections:
            owners = [row for row in range(len(subset)) if subset[row, part_a] == id_a or subset[row, part_b] == id_b][:2]
            if len(owners) == 1:
                person = subset[owners[0]]
                if person[part_b] != id_b:
                    person[part_b] = id_b
                    person[-1] += 1
                    person[-2] += candidate[int(id_b), 2] + score
            elif len(owners) == 2:
                first, second = subset[owners[0]], subset[owners[1]]
                overlap = ((first[:-2] >= 0) & (second[:-2] >= 0)).any()
                if not overlap:  # two fragments of one person: merge them
                    first[:-2] += second[:-2] + 1
                    first[-2:] += second[-2:]
                    first[-2] += score
                    subset = np.delete(subset, owners[1], axis=0)
                else:
                    first[part_b] = id_b
                    first[-1] += 1
                    first[-2] += candidate[int(id_b), 2] + score
            elif limb < 17:  # the two ear-shoulder limbs never start a person
                row = -np.ones(BODY_POINTS + 2)
                row[part_a], row[part_b] = id_a, id_b
                row[-1] = 2
                row[-2] = candidate[int(id_a), 2] + candidate[int(id_b), 2] + score
                subset = np.vstack([subset, row])
    keep = [(row[-1] >= 4 and row[-2] / row[-1] >= 0.4) for row in subset]
    return candidate, subset[np.array(keep, dtype=bool)] if len(subset) else subset


def _confidence(score: float) -> float:
    """JSON confidence of a found point: the heatmap score, kept inside (0, 1] so "found" stays > 0."""
    return float(min(max(score, 1e-3), 1.0))


def people_from_subset(candidate: np.ndarray, subset: np.ndarray, height: int, width: int) -> list[Person]:
    """Each subset row as a :class:`Person` with normalised coordinates (as v1.1 divides them)."""
    people = []
    for row in subset:
        body = np.zeros((BODY_POINTS, 3))
        for joint, index in enumerate(row[:BODY_POINTS].astype(int)):
            if index != -1:
                x, y, score = candidate[index, :3]
                body[joint] = (x / float(width), y / float(height), _confidence(score))
        people.append(Person(body=body))
    return people


def hand_boxes(candidate: np.ndarray, subset: np.ndarray, height: int, width: int) -> list[tuple[int, bool, int, int, int]]:
    """Square hand boxes ``(person, is_left, x, y, side)`` placed beyond each wrist along the forearm,
    sized from forearm and upper-arm lengths (OpenPose's hand detector), left hand first; boxes under
    20 px are dropped."""
    ratio_wrist_elbow = 0.33
    boxes = []
    for person, row in enumerate(subset.astype(int)):
        for is_left, (shoulder, elbow, wrist) in ((True, (5, 6, 7)), (False, (2, 3, 4))):
            if -1 in (row[shoulder], row[elbow], row[wrist]):
                continue
            x1, y1 = candidate[row[shoulder], :2]
            x2, y2 = candidate[row[elbow], :2]
            x3, y3 = candidate[row[wrist], :2]
            x = x3 + ratio_wrist_elbow * (x3 - x2)
            y = y3 + ratio_wrist_elbow * (y3 - y2)
            wrist_elbow = math.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2)
            elbow_shoulder = math.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2)
            side = 1.5 * max(wrist_elbow, 0.9 * elbow_shoulder)
            x, y = max(x - side / 2, 0), max(y - side / 2, 0)
            side_x = width - x if x + side > width else side
            side_y = height - y if y + side > height else side
            side = min(side_x, side_y)
            if side >= 20:
                boxes.append((person, is_left, int(x), int(y), int(side)))
    return boxes


def hand_peaks(heatmaps: np.ndarray, crop_height: int, crop_width: int, threshold: float) -> np.ndarray:
    """Per hand point, ``(x, y, score)`` in crop pixels from the averaged 128x128 heatmaps: the maximum
    inside the connected region (8-connected, of the sigma-3 smoothed map above ``threshold``) with the
    largest heatmap mass. ``(0, 0, 0)`` where nothing passes the threshold."""
    from scipy.ndimage import gaussian_filter
    from skimage.measure import label

    peaks = np.zeros((HAND_POINTS, 3))
    size = heatmaps.shape[0]
    for part in range(HAND_POINTS):
        heatmap = heatmaps[:, :, part].copy()
        binary = np.ascontiguousarray(gaussian_filter(heatmap, sigma=3) > threshold, dtype=np.uint8)
        if not binary.any():
            continue
        labels, count = label(binary, return_num=True, connectivity=2)
        best = int(np.argmax([heatmap[labels == i].sum() for i in range(1, count + 1)])) + 1
        heatmap[labels != best] = 0
        y = int(np.argmax(heatmap.max(axis=1)))
        x = int(np.argmax(heatmap[y]))
        score = heatmap[y, x]
        peaks[part] = (int(float(x) * float(crop_width) / float(size)), int(float(y) * float(crop_height) / float(size)), score)
    return peaks


def _hand_keypoints(peaks: np.ndarray, box_x: int, box_y: int, height: int, width: int) -> np.ndarray:
    """Crop peaks to normalised image keypoints; like v1.1, a coordinate of 0 in the crop means "not
    found", and the division happens in float32."""
    hand = np.zeros((HAND_POINTS, 3))
    found = (peaks[:, 0] >= 1e-6) & (peaks[:, 1] >= 1e-6)
    xs = (peaks[:, 0].astype(np.float32) + box_x) / np.float32(width)
    ys = (peaks[:, 1].astype(np.float32) + box_y) / np.float32(height)
    hand[found] = np.column_stack([xs, ys, [_confidence(s) for s in peaks[:, 2]]])[found]
    return hand


@dataclass(frozen=True)
class OpenPoseConfig(NeuralConfig):
    peak_threshold: float = param(0.1, "minimum smoothed heatmap value of a body keypoint (thre1)", ge=0.0, le=1.0)
    paf_threshold: float = param(0.05, "minimum part-affinity alignment of a limb sample (thre2)", ge=0.0, le=1.0)


@dataclass(frozen=True)
class OpenPoseHandConfig(OpenPoseConfig):
    hand_threshold: float = param(0.05, "minimum smoothed hand heatmap value of a hand keypoint", ge=0.0, le=1.0)
    hand_scales: int = param(4, "hand-network scales averaged, the first N of 0.5, 1, 1.5, 2 x 368 px (fewer is faster)", ge=1, le=len(HAND_SCALES))


_LICENSE = "CMU OpenPose: non-commercial research use only"
_BODY = WeightFile("body_pose_model.pth", "annotators.nets.openpose:remap_body_checkpoint")


class OpenPose(NeuralAnnotator):
    name = "openpose"
    description = "OpenPose body skeleton (COCO-18, multi-person), ControlNet v1.1 drawing + OpenPose JSON keypoints"
    Config: ClassVar[type[OpenPoseConfig]] = OpenPoseConfig
    weights = Weights(license=_LICENSE, files=(_BODY,))
    data_kind = POSE
    map_kind = "pose"

    config: OpenPoseConfig

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from torch import nn

        from annotators.nets.openpose import BodyPoseNet, HandPoseNet

        nets = nn.ModuleDict({"body": self.weights.load_into(BodyPoseNet(), paths[0])})
        if len(paths) > 1:
            nets["hand"] = self.weights.load_into(HandPoseNet(), paths[1], 1)
        return nets

    def _run(self, net: torch.nn.Module, inputs: Sequence[np.ndarray]) -> list[Any]:
        """One forward pass on a stack of same-shape CHW inputs; outputs as float32 numpy, per image."""
        import torch

        batch = torch.from_numpy(np.stack(inputs)).to(self.torch_device, self.torch_dtype)
        outputs = net(batch)
        if isinstance(outputs, tuple):
            return list(zip(*(o.float().cpu().numpy() for o in outputs)))
        return list(outputs.float().cpu().numpy())

    def detect_bodies(self, model: torch.nn.Module, bgr_images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(candidate, subset)`` per same-shape BGR image, with one body forward for the batch."""
        height, width = bgr_images[0].shape[:2]
        prepared = [body_net_input(image) for image in bgr_images]
        results = []
        for (pafs_raw, heatmaps_raw), (_, pad) in zip(self._run(model["body"], [p[0] for p in prepared]), prepared):
            # Kept in float32 (the reference's float64 copies hold the same values) to halve the memory.
            heatmaps = net_outputs_to_image(heatmaps_raw[:BODY_POINTS], pad, height, width)
            pafs = net_outputs_to_image(pafs_raw, pad, height, width)
            peaks = find_body_peaks(heatmaps, self.config.peak_threshold)
            results.append(assemble_people(peaks, pafs, height, self.config.paf_threshold))
        return results

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> list[Annotation]:
        height, width = batch[0].shape[:2]
        bgr_images = [np.ascontiguousarray(image[:, :, ::-1]) for image in batch]
        bodies = self.detect_bodies(model, bgr_images)
        poses = [PoseResult(width, height, people_from_subset(c, s, height, width)) for c, s in bodies]
        self._add_hands(model, bgr_images, bodies, poses)
        return [Annotation(pose.draw(), pose.to_json()) for pose in poses]

    def _add_hands(
        self, model: torch.nn.Module, bgr_images: list[np.ndarray], bodies: list[tuple[np.ndarray, np.ndarray]], poses: list[PoseResult]
    ) -> None:
        """Body only here; :class:`OpenPoseHand` adds the hands to ``poses``."""


class OpenPoseHand(OpenPose):
    name = "openpose_hand"
    description = "OpenPose body skeleton plus hands (21 points each), ControlNet v1.1 drawing + OpenPose JSON keypoints"
    Config: ClassVar[type[OpenPoseHandConfig]] = OpenPoseHandConfig
    weights = Weights(license=_LICENSE, files=(_BODY, WeightFile("hand_pose_model.pth", "annotators.nets.openpose:remap_hand_checkpoint")))

    config: OpenPoseHandConfig

    def hand_heatmaps(self, model: torch.nn.Module, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Averaged 128x128x22 heatmaps per BGR crop over the configured scales; per scale, the crops
        of the whole batch share forward passes (in chunks of ``forward_batch_size``)."""
        scales = HAND_SCALES[: self.config.hand_scales]
        blurred = [cv2.GaussianBlur(crop, (0, 0), 0.8) for crop in crops]
        averages = [np.zeros((HAND_HEATMAP_SIZE, HAND_HEATMAP_SIZE, 22)) for _ in crops]
        step = self.forward_batch_size
        for scale in scales:
            size = int(scale * BOX_SIZE)
            prepared = [hand_net_input(crop, size) for crop in blurred]
            for start in range(0, len(prepared), step):
                chunk = prepared[start : start + step]
                for offset, raw in enumerate(self._run(model["hand"], [p[0] for p in chunk])):
                    pad = chunk[offset][1]
                    heatmap = net_outputs_to_image(raw, pad, HAND_HEATMAP_SIZE, HAND_HEATMAP_SIZE)
                    averages[start + offset] += heatmap / len(scales)
        return averages

    def _add_hands(
        self, model: torch.nn.Module, bgr_images: list[np.ndarray], bodies: list[tuple[np.ndarray, np.ndarray]], poses: list[PoseResult]
    ) -> None:
        height, width = bgr_images[0].shape[:2]
        jobs = []  # (pose, person, is_left, x, y, crop) for every hand box in the batch
        for image, (candidate, subset), pose in zip(bgr_images, bodies, poses):
            for person, is_left, x, y, side in hand_boxes(candidate, subset, height, width):
                jobs.append((pose, person, is_left, x, y, np.ascontiguousarray(image[y : y + side, x : x + side])))
        if not jobs:
            return
        for (pose, person, is_left, x, y, crop), heatmaps in zip(jobs, self.hand_heatmaps(model, [j[-1] for j in jobs])):
            peaks = hand_peaks(heatmaps, crop.shape[0], crop.shape[1], self.config.hand_threshold)
            hand = _hand_keypoints(peaks, x, y, height, width)
            if is_left:
                pose.people[person].left_hand = hand
            else:
                pose.people[person].right_hand = hand
