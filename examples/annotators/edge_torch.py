"""A learned 3x3 edge filter: the smallest torch annotator, as a template.

Method: one 3x3 convolution of the RGB image and a sigmoid (think of a Sobel filter whose weights were
learned). Weights: ``edgenet.safetensors`` in the (made-up) Hub repo ``example/edgenet``, licence
Apache-2.0. The published file was saved from a ``DataParallel`` model, so its keys start with
``module.``; a pure remap strips the prefix and the load is strict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from annotators.base import param
from annotators.neural import NeuralAnnotator, NeuralConfig
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch


def remap_edgenet(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Published keys (``module.conv.weight``) to the module's (``conv.weight``)."""
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def edge_image(probability: np.ndarray, gamma: float) -> np.ndarray:
    """The functional core's last step: edge probability in [0, 1] to a uint8 map."""
    return (np.power(probability, gamma) * 255.0).round().clip(0, 255).astype(np.uint8)


@dataclass(frozen=True)
class EdgeTorchConfig(NeuralConfig):
    gamma: float = param(1.0, "contrast of the edge map: probability ** gamma", gt=0.0, le=10.0)


class EdgeTorch(NeuralAnnotator):
    name = "example_edge_torch"
    description = "Example: a learned 3x3 edge filter (torch), white edges on black"
    Config = EdgeTorchConfig
    config: EdgeTorchConfig
    grayscale = True
    weights = Weights(
        license="Apache-2.0",
        files=(WeightFile("edgenet.safetensors", remap_edgenet),),
        format="safetensors",
        repo_id="example/edgenet",
    )

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from torch import nn

        network = nn.Sequential()
        network.add_module("conv", nn.Conv2d(3, 1, 3, padding=1))
        return self.weights.load_into(network, paths[0])

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        probabilities = model(self.to_tensor(batch) / 255.0).sigmoid()[:, 0].float().cpu().numpy()
        return [edge_image(p, self.config.gamma) for p in probabilities]
