"""Bae surface normals: the ControlNet v1.1 "normalbae" condition.

Method: Bae, Budvytis, Cipolla, "Estimating and Exploiting the Aleatoric Uncertainty in Surface
Normal Estimation" (ICCV 2021), the ScanNet-trained NNET; network in :mod:`annotators.nets.normalbae`.
Weights: ``scannet.pt`` from ``lllyasviel/Annotators`` (baegwangbin/surface_normal_uncertainty, MIT
licence).

Semantics of the v1.1 ``NormalBaeDetector``: RGB/255 with ImageNet mean/std normalisation at the
image's own resolution; the full-resolution unit normal (x, y, z) is mapped to colours by
``((n + 1) / 2).clip(0, 1) * 255`` truncated to uint8, channels in network order.

The network needs sides divisible by 8 (otherwise its refinement stages disagree in size). Other
sizes are padded at the bottom and right by repeating the edge pixels up to the next multiple of 8,
and the prediction is cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from annotators.neural import NeuralAnnotator, NeuralConfig, pad_to_multiple
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch

CHECKPOINT = "scannet.pt"
SIZE_MULTIPLE = 8
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NormalBaeConfig(NeuralConfig):
    pass


class NormalBae(NeuralAnnotator):
    name = "normal_bae"
    description = "Bae et al. surface normals (ScanNet NNET), v1.1 normalbae ControlNet"
    Config = NormalBaeConfig
    weights = Weights(
        license="MIT (baegwangbin/surface_normal_uncertainty)",
        files=(WeightFile(CHECKPOINT, "annotators.nets.normalbae:remap_normalbae_checkpoint"),),
    )
    map_kind = "normals"

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.normalbae import NNET

        return self.weights.load_into(NNET(), paths[0])

    def predict(self, model: torch.nn.Module, batch: list[np.ndarray]) -> torch.Tensor:
        """Full-resolution prediction (N, 4, H, W): unit normal (x, y, z) and kappa."""
        import torch

        height, width = batch[0].shape[:2]
        x = self.to_tensor(batch) / 255.0
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = pad_to_multiple((x - mean) / std, SIZE_MULTIPLE)
        return model(x)[-1][:, :, :height, :width]

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        normals = ((self.predict(model, batch)[:, :3] + 1) * 0.5).clip(0, 1)
        colours = normals.permute(0, 2, 3, 1).float().cpu().numpy()
        return list((colours * 255.0).clip(0, 255).astype(np.uint8))
