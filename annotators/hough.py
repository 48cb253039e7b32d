"""Straight-line segments without weights, a stand-in for the ControlNet paper's "Hough lines" condition.

Segments come from OpenCV's Line Segment Detector (R. Grompone von Gioi et al., "LSD: a Line
Segment Detector", IPOL 2012). The paper's own condition was drawn from M-LSD (the ``mlsd``
annotator); this one needs no weights and reproduces no reference map. Segments shorter than
``min_length`` pixels are dropped, and the rest are drawn as the M-LSD annotator draws them: white
lines 1 px wide on black, endpoints truncated to integers. No weights.

``refine="standard"`` (the default) runs LSD's region growing and rectangle refinement. It skips
LSD's a-contrario validation, the number of false alarms (NFA), which OpenCV computes only with
``refine="advanced"`` (the default before): that validation drops some segments, mostly short ones
in texture, and on some textured photographs (scikit-image's brick and motorcycle_right, at 512
pixels) takes seconds where the standard refinement takes hundredths. ``bench/hough.py`` compares
the two on scikit-image's 20 photographs: the standard map holds at least 99.7% of the advanced
map's drawn pixels (within 1 px) and all its segments of 64 px or more; 6% of its own drawn
pixels on average (27% at worst, one of hubble_deep_field's 4 segments) are segments the NFA test
would have dropped. With ``refine="advanced"``,
``min_score`` also drops segments scoring below it, in -log10(NFA).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, param

_REFINEMENTS = {"standard": cv2.LSD_REFINE_STD, "advanced": cv2.LSD_REFINE_ADV}


@dataclass(frozen=True)
class HoughConfig(AnnotatorConfig):
    min_length: float = param(16.0, "shortest segment kept, in pixels", ge=0.0, le=10000.0)
    min_score: float = param(0.0, "lowest LSD score kept, -log10(NFA); needs refine=advanced", ge=-1000.0, le=1000.0)
    scale: float = param(0.8, "LSD's internal image scale", gt=0.0, le=1.0)
    refine: str = param("standard", "LSD refinement: advanced adds the NFA test (slow on texture)", choices=tuple(_REFINEMENTS))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_score > 0 and self.refine != "advanced":
            raise ValueError(f"HoughConfig.min_score={self.min_score} needs refine='advanced': LSD scores segments only then")


def detect_segments(image: np.ndarray, min_length: float, min_score: float = 0.0, scale: float = 0.8, refine: str = "standard") -> np.ndarray:
    """Nx4 float32 segments ``x1, y1, x2, y2`` found by LSD and filtered by length (and, with
    ``refine="advanced"``, by score)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    detector = cv2.createLineSegmentDetector(_REFINEMENTS[refine], scale)
    lines, _width, _precision, scores = detector.detect(gray)
    if lines is None:
        return np.zeros((0, 4), np.float32)
    lines = lines.reshape(-1, 4)
    lengths = np.hypot(lines[:, 2] - lines[:, 0], lines[:, 3] - lines[:, 1])
    keep = lengths >= min_length
    if scores is not None:  # only the advanced refinement scores segments
        keep &= scores.reshape(-1) >= min_score
    return lines[keep]


def draw_segments(segments: np.ndarray, height: int, width: int) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in segments:
        cv2.line(canvas, (int(x1), int(y1)), (int(x2), int(y2)), 255, 1)
    return canvas


class Hough(PerImageAnnotator):
    name = "hough"
    description = "Straight line segments (OpenCV LSD), white 1 px lines on black"
    Config = HoughConfig
    grayscale = True
    map_kind = "edges"

    def _map(self, image: np.ndarray) -> np.ndarray:
        c = self.config
        segments = detect_segments(image, c.min_length, c.min_score, c.scale, c.refine)
        return draw_segments(segments, *image.shape[:2])
