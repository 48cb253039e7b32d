"""Which metrics measure which kind of condition, and scoring samples against their conditions.

The measure is chosen by what the annotator says its map shows (``Annotator.map_kind``, one of
:data:`annotators.base.MAP_KINDS`), or by its data kind (pose, segmentation) when it declares no
map kind; nothing here looks at annotator classes. A sample is brought to its condition's size,
re-annotated with the annotator that made the condition, and compared with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from controlnet.evaluation import metrics

if TYPE_CHECKING:
    from annotators.base import Annotation, Annotator

__all__ = ["MEASURES", "Measure", "Metric", "ScoreOptions", "Scored", "Target", "fit_to", "measure_for", "score_samples"]


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    description: str


@dataclass(frozen=True)
class ScoreOptions:
    edge_tolerance: int = 0  # pixels an edge may be off (F1)
    pck_threshold: float = 0.1  # PCK's fraction of the person's bounding-box long side


@dataclass(frozen=True)
class Target:
    """What a sample should follow: the condition map, and the structured data the annotator found
    (decoded keypoints or label map) when the measure compares data."""

    map: np.ndarray
    data: Any = None


@dataclass(frozen=True)
class Measure:
    kind: str
    metrics: tuple[Metric, ...]  # the first one ranks the samples (worst-following first)
    uses_data: bool  # compares the annotators' structured data rather than the maps
    score: Callable[[Target, Annotation, ScoreOptions], dict[str, float]]

    @property
    def primary(self) -> Metric:
        return self.metrics[0]


def _edges(target: Target, found: Annotation, options: ScoreOptions) -> dict[str, float]:
    return metrics.edge_f1(target.map, found.map, options.edge_tolerance)


def _similarity(target: Target, found: Annotation, options: ScoreOptions) -> dict[str, float]:
    return {
        "ssim": metrics.ssim(target.map, found.map),
        "ms_ssim": metrics.ms_ssim(target.map, found.map),
        "psnr": metrics.psnr(target.map, found.map),
    }


def _depth(target: Target, found: Annotation, options: ScoreOptions) -> dict[str, float]:
    return {"rmse": metrics.rmse(target.map, found.map)}


def _normals(target: Target, found: Annotation, options: ScoreOptions) -> dict[str, float]:
    return metrics.angular_error(target.map, found.map)


def _segmentation(target: Target, found: Annotation, options: ScoreOptions) -> dict[str, float]:
    return metrics.mean_iou(np.asarray(target.data), np.asarray(found.data))


def _pose(target: Target, found: Annotation, options: ScoreOptions) -> dict[str, float]:
    height, width = target.map.shape[:2]
    wanted = metrics.people_from_openpose(target.data, width, height)
    seen = metrics.people_from_openpose(found.data, width, height)
    return {"pck": metrics.pck(wanted, seen, options.pck_threshold), "oks": metrics.oks(wanted, seen)}


def _mask(target: Target, found: Annotation, options: ScoreOptions) -> dict[str, float]:
    return {"iou": metrics.mask_iou(target.map, found.map)}


_F1 = Metric("f1", True, "F1 of the edge pixels (harmonic mean of precision and recall)")
_SIMILARITY = (
    Metric("ssim", True, "structural similarity, Gaussian window (Wang et al. 2004)"),
    Metric("ms_ssim", True, "multi-scale structural similarity (Wang et al. 2003)"),
    Metric("psnr", True, "peak signal-to-noise ratio, dB (identical maps: 100)"),
)

MEASURES: dict[str, Measure] = {
    "edges": Measure("edges", (_F1, Metric("precision", True, "share of the sample's edge pixels on condition edges"), Metric("recall", True, "share of the condition's edge pixels found in the sample")), False, _edges),
    "soft_edges": Measure("soft_edges", _SIMILARITY, False, _similarity),
    "image": Measure("image", _SIMILARITY, False, _similarity),
    "depth": Measure("depth", (Metric("rmse", False, "root mean squared error of the depth maps, 0-255"),), False, _depth),
    "normals": Measure("normals", (
        Metric("angular_error", False, "mean angle between the normals, degrees"),
        Metric("angular_error_median", False, "median angle between the normals, degrees"),
        Metric("within_11_25", True, "share of pixels whose normals are within 11.25 degrees"),
    ), False, _normals),
    "segmentation": Measure("segmentation", (
        Metric("miou", True, "mean intersection over union of the classes in either label map"),
        Metric("pixel_accuracy", True, "share of pixels with the same label"),
    ), True, _segmentation),
    "pose": Measure("pose", (
        Metric("pck", True, "share of the condition's keypoints found within the PCK threshold"),
        Metric("oks", True, "object keypoint similarity of the body keypoints (COCO)"),
    ), True, _pose),
    "mask": Measure("mask", (Metric("iou", True, "intersection over union of the white regions"),), False, _mask),
}

#: data kinds that make a measure of their own for annotators that declare no map kind
_DATA_MEASURES = ("pose", "segmentation")


def measure_for(annotator: type[Annotator]) -> Measure:
    """The measure of an annotator's maps, from its declared map kind or data kind."""
    kind = annotator.map_kind
    if kind is None and annotator.data_kind is not None and annotator.data_kind.name in _DATA_MEASURES:
        kind = annotator.data_kind.name
    if kind is None:
        raise ValueError(f"annotator {annotator.name} declares no map kind, so how well samples follow its maps cannot be measured")
    if kind not in MEASURES:
        raise ValueError(f"annotator {annotator.name} declares map kind {kind!r}, which has no measure; known: {', '.join(MEASURES)}")
    return MEASURES[kind]


def fit_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` resized to ``height`` x ``width`` (area averaging when shrinking, cubic otherwise),
    so that it is annotated at the scale its condition was made at."""
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


@dataclass(frozen=True)
class Scored:
    """One sample's scores and re-annotation, or why it could not be scored (``error``)."""

    scores: dict[str, float] | None
    annotation: Annotation
    error: str | None = None


def score_samples(
    annotator: Annotator, measure: Measure, targets: list[Target], samples: list[np.ndarray], options: ScoreOptions
) -> list[Scored]:
    """Each sample of one batch re-annotated at its target's size and scored against it."""
    fitted = [fit_to(sample, *target.map.shape[:2]) for sample, target in zip(samples, targets, strict=True)]
    results = []
    for target, found in zip(targets, annotator.annotate(fitted, single_channel=True)):
        try:
            results.append(Scored(measure.score(target, found, options), found))
        except ValueError as err:  # e.g. maps too small for SSIM's window, or no normal to compare
            results.append(Scored(None, found, str(err)))
    return results
