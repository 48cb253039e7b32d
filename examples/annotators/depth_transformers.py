"""Monocular depth through a transformers model: a template for annotators on transformers.

Method: DPT (Ranftl et al., "Vision Transformers for Dense Prediction", ICCV 2021), run through
``AutoModelForDepthEstimation``; any depth-estimation checkpoint of transformers works, chosen by
``model`` (a Hub id or a local folder). Weights: ``Intel/dpt-large`` by default, licence Apache-2.0.
The image goes in at a fixed square size, the depth comes back at the image's size, min-max scaled to
uint8 (near is bright).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from annotators.base import param
from annotators.neural import NeuralAnnotator, NeuralConfig
from annotators.weights import Weights

if TYPE_CHECKING:
    import torch


def depth_image(depth: np.ndarray) -> np.ndarray:
    """Relative depth (HxW float) min-max scaled to uint8; a constant depth gives zeros."""
    shifted = depth - depth.min()
    top = shifted.max()
    return np.zeros(depth.shape, np.uint8) if top <= 0 else (shifted / top * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class DepthTransformersConfig(NeuralConfig):
    size: int = param(384, "square size the network sees (a multiple of its patch size)", ge=32, le=2048)


class DepthTransformers(NeuralAnnotator):
    name = "example_depth_transformers"
    description = "Example: relative depth from a transformers depth model (DPT), near is bright"
    Config = DepthTransformersConfig
    config: DepthTransformersConfig
    grayscale = True
    weights = Weights(license="Apache-2.0", format="transformers", model_id="Intel/dpt-large")

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from transformers import AutoModelForDepthEstimation

        return AutoModelForDepthEstimation.from_pretrained(paths[0])

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        import torch

        height, width = batch[0].shape[:2]
        size = self.config.size
        resized = [cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC) for image in batch]
        pixels = (self.to_tensor(resized) / 255.0 - 0.5) / 0.5
        depth = model(pixel_values=pixels).predicted_depth[:, None].float()
        depth = torch.nn.functional.interpolate(depth, (height, width), mode="bilinear", align_corners=False)
        return [depth_image(d) for d in depth[:, 0].cpu().numpy()]
