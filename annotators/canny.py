"""Canny edges: the ControlNet paper's "Canny edge" condition.

Method: J. Canny, "A Computational Approach to Edge Detection" (TPAMI 1986), via OpenCV, run on
the RGB image as the reference ``CannyDetector`` does (gradients of the three channels, strongest
wins). No weights. Output: white edges on black.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, param


@dataclass(frozen=True)
class CannyConfig(AnnotatorConfig):
    low_threshold: int = param(100, "hysteresis low threshold", ge=0, le=1020)
    high_threshold: int = param(200, "hysteresis high threshold", ge=0, le=1020)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low_threshold > self.high_threshold:
            raise ValueError(
                f"CannyConfig.low_threshold={self.low_threshold} is invalid: must be <= high_threshold ({self.high_threshold})"
            )


def canny(image: np.ndarray, low_threshold: int, high_threshold: int) -> np.ndarray:
    """Binary edge map (HxW uint8, 255 on edges) of an RGB or gray image."""
    return cv2.Canny(image, low_threshold, high_threshold)


class Canny(PerImageAnnotator):
    name = "canny"
    description = "Canny edges (OpenCV), white on black"
    Config = CannyConfig
    grayscale = True
    map_kind = "edges"

    def _map(self, image: np.ndarray) -> np.ndarray:
        return canny(image, self.config.low_threshold, self.config.high_threshold)
