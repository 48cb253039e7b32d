"""Standard line art, the weight-free ``lineart_standard`` of sd-webui-controlnet: how much darker
each pixel is than its Gaussian neighbourhood, normalised by the median stroke strength. No weights.
Output: white lines on black (the form the v1.1 lineart ControlNet consumes).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, param


@dataclass(frozen=True)
class LineartStandardConfig(AnnotatorConfig):
    gaussian_sigma: float = param(6.0, "sigma of the neighbourhood blur", gt=0.0, le=64.0)
    intensity_threshold: int = param(8, "strokes weaker than this are left out of the median", ge=0, le=255)


def lineart_standard(image: np.ndarray, gaussian_sigma: float, intensity_threshold: int) -> np.ndarray:
    x = image.astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), gaussian_sigma)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    strokes = intensity[intensity > intensity_threshold]
    # An image with no stroke has an empty median (NaN); the floor of 16 then applies alone.
    scale = max(16.0, float(np.median(strokes))) if strokes.size else 16.0
    return (intensity / scale * 127).clip(0, 255).astype(np.uint8)


class LineartStandard(PerImageAnnotator):
    name = "lineart_standard"
    description = "Weight-free line art from local darkness, white on black"
    Config = LineartStandardConfig
    grayscale = True
    map_kind = "soft_edges"

    def _map(self, image: np.ndarray) -> np.ndarray:
        c = self.config
        return lineart_standard(image, c.gaussian_sigma, c.intensity_threshold)
