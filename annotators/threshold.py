"""Pixel-wise binarisation and inversion, the sd-webui-controlnet ``threshold``, ``binary`` and
``invert`` preprocessors.

``threshold`` keeps pixels whose darkest channel is above a level; ``binary`` inverts-thresholds the
luma at a level, or at Otsu's level (N. Otsu, "A threshold selection method from gray-level
histograms", 1979) when the level is 0 or 255; ``invert`` turns black-on-white line art into the
white-on-black form ControlNet consumes. No weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, param


@dataclass(frozen=True)
class ThresholdConfig(AnnotatorConfig):
    threshold: int = param(127, "white where the darkest channel is above this", ge=0, le=255)


@dataclass(frozen=True)
class BinaryConfig(AnnotatorConfig):
    threshold: int = param(0, "luma level; 0 or 255 picks Otsu's level", ge=0, le=255)


@dataclass(frozen=True)
class InvertConfig(AnnotatorConfig):
    pass


def binary(image: np.ndarray, threshold: int) -> np.ndarray:
    """HxW uint8: 255 where the luma is at or below the level (dark lines become white)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    flags = cv2.THRESH_BINARY_INV | (cv2.THRESH_OTSU if threshold in (0, 255) else 0)
    return cv2.threshold(gray, threshold, 255, flags)[1]


class Threshold(PerImageAnnotator):
    name = "threshold"
    description = "White where every channel is above a level, black elsewhere"
    Config = ThresholdConfig
    grayscale = True
    map_kind = "mask"

    def _map(self, image: np.ndarray) -> np.ndarray:
        return np.where(image.min(axis=2) > self.config.threshold, np.uint8(255), np.uint8(0))


class Binary(PerImageAnnotator):
    name = "binary"
    description = "Inverse binary threshold of the luma (Otsu by default): dark lines become white"
    Config = BinaryConfig
    grayscale = True
    map_kind = "mask"

    def _map(self, image: np.ndarray) -> np.ndarray:
        return binary(image, self.config.threshold)


class Invert(PerImageAnnotator):
    name = "invert"
    description = "Invert colours: black lines on white become white on black"
    Config = InvertConfig
    map_kind = "image"

    def _map(self, image: np.ndarray) -> np.ndarray:
        return 255 - image
