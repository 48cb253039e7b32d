"""XDoG scribble: thresholded difference of Gaussians, the sd-webui-controlnet ``scribble_xdog``.

Method: H. Winnemöller et al., "XDoG: An eXtended difference-of-Gaussians compendium" (2012), in
the simplified form of sd-webui-controlnet (sigmas 0.5 and 5.0, darkest channel). No weights.
Output: white strokes on black, for the scribble ControlNets.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, param


@dataclass(frozen=True)
class XDoGConfig(AnnotatorConfig):
    threshold: int = param(32, "stroke threshold on twice the DoG response", ge=1, le=510)
    sigma_fine: float = param(0.5, "sigma of the fine Gaussian", gt=0.0, le=50.0)
    sigma_coarse: float = param(5.0, "sigma of the coarse Gaussian", gt=0.0, le=100.0)


def xdog(image: np.ndarray, threshold: int, sigma_fine: float = 0.5, sigma_coarse: float = 5.0) -> np.ndarray:
    """HxW uint8 map: 255 where the darkest channel's DoG response exceeds the threshold."""
    x = image.astype(np.float32)
    fine = cv2.GaussianBlur(x, (0, 0), sigma_fine)
    coarse = cv2.GaussianBlur(x, (0, 0), sigma_coarse)
    # The reference quantises the response to uint8 before thresholding; keep that rounding, but
    # double it in int32: the reference's uint8 doubling wraps above 127, punching holes in strong strokes.
    response = 255 - (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8).astype(np.int32)
    return np.where(2 * response > threshold, np.uint8(255), np.uint8(0))


class ScribbleXDoG(PerImageAnnotator):
    name = "scribble_xdog"
    description = "XDoG scribble (difference of Gaussians), white strokes on black"
    Config = XDoGConfig
    grayscale = True
    map_kind = "soft_edges"

    def _map(self, image: np.ndarray) -> np.ndarray:
        c = self.config
        return xdog(image, c.threshold, c.sigma_fine, c.sigma_coarse)
