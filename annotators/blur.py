"""Gaussian blur, the sd-webui-controlnet ``blur_gaussian`` preprocessor for the tile/blur
ControlNets. No weights. Output: the blurred RGB image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, param


@dataclass(frozen=True)
class BlurConfig(AnnotatorConfig):
    sigma: float = param(9.0, "Gaussian standard deviation in pixels", gt=0.0, le=64.0)


class BlurGaussian(PerImageAnnotator):
    name = "blur_gaussian"
    description = "Gaussian blur of the image (tile/blur ControlNets)"
    Config = BlurConfig
    map_kind = "image"

    def _map(self, image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (0, 0), self.config.sigma)
