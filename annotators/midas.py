"""MiDaS depth and the depth-derived normal map: the ControlNet v1.0 "depth" and "normal" conditions.

Method: MiDaS v3 DPT-Hybrid, Ranftl et al., "Vision Transformers for Dense Prediction" (ICCV 2021)
and "Towards Robust Monocular Depth Estimation" (TPAMI 2022); network in
:mod:`annotators.nets.dpt_hybrid`. Weights: ``dpt_hybrid-midas-501f0c75.pt`` from
``lllyasviel/Annotators`` (the isl-org/MiDaS release, MIT licence). Its transformers conversion,
``Intel/dpt-hybrid-midas`` (same weights), loads too: pass its ``model.safetensors`` as ``weights``.
Either way the ViT LayerNorms use timm's eps 1e-6, which the weights were trained with (the
transformers config says 1e-12).

Semantics of the v1.0 ``MidasDetector``: the image goes in at its own resolution as ``rgb/127.5 - 1``
(no 384 resize), the relative inverse depth ``d`` comes out at the same size.
  * depth map: ``(d - min d) / max(d - min d) * 255``, truncated to uint8, gray.
  * normal map: Sobel x and y (3x3, float32) of the raw ``d`` with z = ``a``; x and y are zeroed
    where the normalised depth is below ``bg_th`` (background); unit length, ``*127.5 + 127.5``,
    uint8, channels (x, y, z) as the v1.0 normal ControlNet was trained on.

The network needs sides divisible by 32 (the reference crashes otherwise). Other sizes are padded
at the bottom and right by repeating the edge pixels up to the next multiple of 32, and the depth is
cropped back before normalisation; sizes that are multiples of 32 (every ``resize_image`` output)
are unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from annotators.base import param
from annotators.neural import NeuralAnnotator, NeuralConfig, pad_to_multiple
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch

CHECKPOINT = "dpt_hybrid-midas-501f0c75.pt"


def depth_to_map(depth: np.ndarray) -> np.ndarray:
    """Raw depth (HxW) min-max normalised to [0, 1], in float32 as the reference computes it; a
    constant depth (e.g. all clipped to 0) gives zeros instead of the reference's 0/0."""
    shifted = depth.astype(np.float32) - np.float32(depth.min())
    top = shifted.max()
    return shifted / top if top > 0 else np.zeros_like(shifted)


def depth_image(normalised: np.ndarray) -> np.ndarray:
    return (normalised * np.float32(255.0)).clip(0, 255).astype(np.uint8)


def normal_image(depth: np.ndarray, normalised: np.ndarray, a: float, bg_th: float) -> np.ndarray:
    """The v1.0 normal map from raw depth (see the module docstring)."""
    depth = depth.astype(np.float32)
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    z = np.full_like(x, a)
    background = normalised < bg_th
    x[background] = 0
    y[background] = 0
    normal = np.stack([x, y, z], axis=2)
    normal /= np.sum(normal**2.0, axis=2, keepdims=True) ** 0.5
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


class _MidasBase(NeuralAnnotator):
    weights = Weights(license="MIT (isl-org/MiDaS)", files=(WeightFile(CHECKPOINT, "annotators.nets.dpt_hybrid:remap_midas_checkpoint"),))

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.dpt_hybrid import DPTHybrid

        return self.weights.load_into(DPTHybrid(), paths[0])

    def predict_depth(self, model: torch.nn.Module, batch: list[np.ndarray]) -> np.ndarray:
        """Raw relative inverse depth (N, H, W) float32 for a same-shape batch."""
        from annotators.nets.dpt_hybrid import SIZE_MULTIPLE

        height, width = batch[0].shape[:2]
        x = pad_to_multiple(self.to_tensor(batch) / 127.5 - 1.0, SIZE_MULTIPLE)
        depth = model(x)[:, :height, :width]
        return depth.float().cpu().numpy()


@dataclass(frozen=True)
class MidasDepthConfig(NeuralConfig):
    pass


class MidasDepth(_MidasBase):
    name = "depth_midas"
    description = "MiDaS DPT-Hybrid relative depth, near is bright (v1.0 depth ControlNet)"
    Config = MidasDepthConfig
    grayscale = True
    map_kind = "depth"

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        return [depth_image(depth_to_map(depth)) for depth in self.predict_depth(model, batch)]


@dataclass(frozen=True)
class MidasNormalConfig(NeuralConfig):
    a: float = param(math.pi * 2.0, "z component of the normal before normalisation (larger: flatter)", gt=0.0)
    bg_th: float = param(0.1, "normalised depth below which x and y are zeroed (background)", ge=0.0, le=1.0)


class MidasNormal(_MidasBase):
    name = "normal_midas"
    description = "Normal map from MiDaS DPT-Hybrid depth gradients (v1.0 normal ControlNet)"
    Config = MidasNormalConfig
    config: MidasNormalConfig
    map_kind = "normals"

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        maps = []
        for depth in self.predict_depth(model, batch):
            maps.append(normal_image(depth, depth_to_map(depth), self.config.a, self.config.bg_th))
        return maps
