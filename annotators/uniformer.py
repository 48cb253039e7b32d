"""UniFormer ADE20K segmentation: ControlNet v1.0's ``seg`` annotator, v1.1's ``seg_ufade20k``.

Method: UniFormer-S (Li et al., ICLR 2022) with an UperNet head (Xiao et al., ECCV 2018), trained
on ADE20K's 150 classes; network in :mod:`annotators.nets.uniformer`. Weights:
``upernet_global_small.pth`` from ``lllyasviel/Annotators`` (the Sense-X/UniFormer release,
MIT licence). Its auxiliary FCN head is a training loss only: the remap drops its 8 entries
and the strict load checks every other weight.

Semantics of the reference (``UniformerDetector``, mmseg's ``inference_segmentor``):
  * the image is rescaled so that its short side is 512 and its long side at most 2048
    (``scale = min(2048 / long, 512 / short)``, sides ``int(x * scale + 0.5)``, cv2 bilinear on
    uint8); ``resolution`` moves the 512 (and the cap, to 4x it);
  * mmseg normalisation with ``to_rgb=True``: the RGB input is swapped, so the network sees BGR,
    ``(x - [123.675, 116.28, 103.53]) * (1 / [58.395, 57.12, 57.375])``;
  * the 150 logits at 1/4 are resized bilinearly to the rescaled size, then to the input's size,
    softmaxed and arg-maxed;
  * the map is ``palette[label]`` in the ADE20K palette (:mod:`annotators.labels`).
The label map (HxW uint8, ADE20K class indices) is returned as ``Annotation.data``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from annotators.base import Annotation, param
from annotators.labels import ADE20K
from annotators.neural import NeuralAnnotator, NeuralConfig
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch

CHECKPOINT = "upernet_global_small.pth"
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)
#: mmseg's test scale (2048, 512): the long side may be at most this many times the short side's target
LONG_SIDE_FACTOR = 4


def mmseg_rescaled_size(height: int, width: int, short: int, long: int) -> tuple[int, int]:
    """mmcv ``imrescale`` with ``keep_ratio``: the largest scale with the short side at most
    ``short`` and the long side at most ``long``; sides rounded half up."""
    scale = min(long / max(height, width), short / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


@dataclass(frozen=True)
class SegUFADE20KConfig(NeuralConfig):
    resolution: int = param(512, "short side the network sees (the reference's 512; the long side is capped at 4x it)", ge=32, le=4096)


class SegUFADE20K(NeuralAnnotator):
    name = "seg_ufade20k"
    description = "UniFormer-S + UperNet ADE20K segmentation in the ADE20K palette (v1.0 seg, v1.1 seg_ufade20k)"
    Config = SegUFADE20KConfig
    config: SegUFADE20KConfig
    weights = Weights(
        license="MIT (Sense-X/UniFormer)",
        files=(WeightFile(CHECKPOINT, "annotators.nets.uniformer:remap_uniformer_checkpoint"),),
    )
    data_kind = ADE20K
    map_kind = "segmentation"

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.uniformer import UniformerUperNet

        return self.weights.load_into(UniformerUperNet(), paths[0])

    def network_input(self, batch: list[np.ndarray]) -> torch.Tensor:
        """The rescaled, BGR, mmseg-normalised batch (N, 3, h, w) on the annotator's device."""
        import torch

        height, width = batch[0].shape[:2]
        size = mmseg_rescaled_size(height, width, self.config.resolution, LONG_SIDE_FACTOR * self.config.resolution)
        if size != (height, width):
            batch = [cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR) for image in batch]
        x = self.to_tensor(batch).flip(1)  # RGB -> BGR: mmseg's to_rgb swap applied to an RGB input
        mean = torch.tensor(MMSEG_MEAN, device=x.device).view(1, 3, 1, 1)
        scale = torch.tensor([1.0 / s for s in MMSEG_STD], device=x.device).view(1, 3, 1, 1)  # mmcv: x * (1/std)
        return ((x.float() - mean) * scale).to(self.torch_dtype)

    def predict_labels(self, model: torch.nn.Module, batch: list[np.ndarray]) -> list[torch.Tensor]:
        """ADE20K class indices (H, W) per image, at the input size."""
        import torch.nn.functional as F

        x = self.network_input(batch)
        logits = model(x).float()
        labels = []
        for image_logits in logits.split(1):  # one image at a time: its full-size scores are the memory peak
            scores = F.interpolate(image_logits, size=x.shape[2:], mode="bilinear", align_corners=False)
            if tuple(x.shape[2:]) != batch[0].shape[:2]:
                scores = F.interpolate(scores, size=batch[0].shape[:2], mode="bilinear", align_corners=False)
            labels.append(scores.softmax(dim=1).argmax(dim=1)[0])
        return labels

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[Annotation]:
        import torch

        return [ADE20K.annotation(labels.to("cpu", torch.uint8).numpy()) for labels in self.predict_labels(model, batch)]
