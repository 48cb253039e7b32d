"""Straight-line segments without weights: the ControlNet paper's "Hough lines" condition.

Segments come from OpenCV's Line Segment Detector (R. Grompone von Gioi et al., "LSD: a Line
Segment Detector", IPOL 2012) with its a-contrario score, -log10(NFA). Segments shorter than
``min_length`` pixels or scoring below ``min_score`` are dropped, and the rest are drawn as the
M-LSD annotator draws them: white lines 1 px wide on black, endpoints truncated to integers.
No weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, param


@dataclass(frozen=True)
class HoughConfig(AnnotatorConfig):
    min_length: float = param(16.0, "shortest segment kept, in pixels", ge=0.0, le=10000.0)
    min_score: float = param(0.0, "lowest LSD score kept, -log10(NFA)", ge=-1000.0, le=1000.0)
    scale: float = param(0.8, "LSD's internal image scale", gt=0.0, le=1.0)


def detect_segments(image: np.ndarray, min_length: float, min_score: float, scale: float = 0.8) -> np.ndarray:
    """Nx4 float32 segments ``x1, y1, x2, y2`` found by LSD and filtered by length and score."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    detector = cv2.createLineSegmentDetector(cv2.LSD_REFINE_ADV, scale)
    lines, _width, _precision, scores = detector.detect(gray)
    if lines is None:
        return np.zeros((0, 4), np.float32)
    lines = lines.reshape(-1, 4)
    lengths = np.hypot(lines[:, 2] - lines[:, 0], lines[:, 3] - lines[:, 1])
    keep = (lengths >= min_length) & (scores.reshape(-1) >= min_score)
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
        segments = detect_segments(image, c.min_length, c.min_score, c.scale)
        return draw_segments(segments, *image.shape[:2])
