"""TEED soft edges, sd-webui-controlnet's ``softedge_teed`` preprocessor.

Method: X. Soria, Y. Li, M. Rouhani and A. D. Sappa, "Tiny and Efficient Model for the Edge Detection
Generalization" (ICCV 2023 workshops): a 58K-parameter edge detector (:mod:`annotators.nets.teed`).
Weights: ``7_model.pth``, TEED trained on BIPED, as the authors publish it in xavysp/TEED
(``checkpoints/BIPED/7/``, MIT licence). sd-webui downloads it from the Hub mirror
``bdsqlsz/qinglong_controlnet-lllite`` (``Annotators/7_model.pth``), whose repo is labelled
CC-BY-NC-SA-4.0; that is where the Hub lookup goes too.

The pipeline is sd-webui's (``annotator/teed/__init__.py`` and its preprocessor entry): the image is
padded at the bottom and right to multiples of 64, repeating its edge (``resize_image_with_pad``; the
resize is the caller's), and goes in as raw 0..255 RGB; the four output maps (three side maps and the
fused one, all at the padded size, so the reference's resize to it changes nothing) are averaged in
float32 and passed through a float64 sigmoid, quantised by ``safe_step`` into ``safe_steps`` levels
(none when 0), scaled by 255 and truncated to uint8, then cropped back.
Output: white soft edges on black, single channel, at the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np

from annotators.base import param
from annotators.hed import to_uint8_map
from annotators.neural import NeuralAnnotator, NeuralConfig
from annotators.ops import safe_step
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch

__all__ = ["SoftEdgeTEED", "TEEDConfig", "teed_map"]

_PAD_MULTIPLE = 64


@dataclass(frozen=True)
class TEEDConfig(NeuralConfig):
    safe_steps: int = param(2, "quantisation levels above black (sd-webui's 'Safe Steps'); 0 keeps the soft map", ge=0, le=10)


def teed_map(probability: np.ndarray, safe_steps: int) -> np.ndarray:
    """An edge probability in [0, 1] to the uint8 map: ``safe_step`` levels unless 0, x255 truncated."""
    return to_uint8_map(safe_step(probability, safe_steps) if safe_steps else probability)


def _fused_on_device(outputs: Sequence[torch.Tensor]) -> np.ndarray:
    """The mean of the four maps and the float64 sigmoid on the accelerator: (N, H, W) probabilities."""
    import torch

    mean = torch.cat([o.float() for o in outputs], dim=1).mean(dim=1)
    return torch.sigmoid(mean.double()).cpu().numpy()


class SoftEdgeTEED(NeuralAnnotator):
    name = "softedge_teed"
    description = "TEED soft edges (sd-webui softedge_teed, 'safe' quantised by default), tiny 58K-parameter network"
    Config: ClassVar[type[TEEDConfig]] = TEEDConfig
    weights = Weights(
        license="MIT (xavysp/TEED; the Hub mirror sd-webui uses is labelled CC-BY-NC-SA-4.0)",
        files=(WeightFile("7_model.pth", "annotators.nets.teed:remap_teed_checkpoint", subfolder="Annotators"),),
        repo_id="bdsqlsz/qinglong_controlnet-lllite",
    )
    grayscale = True
    map_kind = "soft_edges"

    config: TEEDConfig

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.teed import TEED

        return self.weights.load_into(TEED(), paths[0])

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> list[np.ndarray]:
        height, width = batch[0].shape[:2]
        bottom, right = -height % _PAD_MULTIPLE, -width % _PAD_MULTIPLE
        padded = [cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REPLICATE) for image in batch]
        outputs = model(self.to_tensor(padded))
        if self.torch_device.type != "cpu":
            probabilities = list(_fused_on_device(outputs))
        else:
            maps = [o[:, 0].float().numpy() for o in outputs]
            probabilities = []
            for index in range(len(batch)):
                # The reference's order: a float32 mean over the stacked maps, then a float64 sigmoid.
                mean = np.stack([m[index] for m in maps], axis=2).mean(axis=2)
                probabilities.append(1.0 / (1.0 + np.exp(-mean.astype(np.float64))))
        return [np.ascontiguousarray(teed_map(p, self.config.safe_steps)[:height, :width]) for p in probabilities]
