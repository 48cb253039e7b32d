"""M-LSD straight line segments: the ControlNet "MLSD" condition.

Method: Gu, Lee, Kim, Wang and Wang, "Towards Light-weight and Real-time Line Segment Detection"
(AAAI 2022), the ``MobileV2_MLSD_Large`` model as ControlNet runs it (``MLSDdetector``). Weights:
``mlsd_large_512_fp32.pth`` from lllyasviel/Annotators, released by NAVER under Apache-2.0.

Pipeline (reference): the RGB image plus a constant fourth plane, scaled to [-1, 1], runs at its
own size; the half-resolution TP map is decoded by taking the sigmoid of the centre logits, keeping
3x3 local maxima, and reading the start/end displacements at the 200 best centres. Centres above
``value_threshold`` whose segment is longer than ``distance_threshold`` (TP-map pixels) become
lines, drawn 1 px white on black after scaling back to image pixels with ``int()`` truncation.

Deviation, for sizes the reference cannot run: the network needs sides divisible by 16, so other
sizes are first resized (INTER_AREA, as the reference's own resize step) to the nearest multiple
of 16 and the lines scaled back by the size ratio; the reference instead fails and returns a
blank map. Sizes that are multiples of 16 (e.g. 512) are untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from annotators.base import param
from annotators.neural import NeuralAnnotator, NeuralConfig
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch

#: number of segment centres the decoder considers, as in the reference
TOP_K = 200
#: the network's total stride; input sides must be divisible by it
NETWORK_STRIDE = 16


@dataclass(frozen=True)
class MLSDConfig(NeuralConfig):
    value_threshold: float = param(0.1, "minimum centre score (sigmoid) of a kept segment", ge=0.0, le=1.0)
    distance_threshold: float = param(0.1, "minimum segment length, in pixels of the half-size TP map", ge=0.0)


@dataclass(frozen=True)
class DecodedSegments:
    """The decoder's intermediate results for one image, in TP-map pixels."""

    centres_yx: np.ndarray  # (k, 2) int64, top-k centre positions
    scores: np.ndarray  # (k,) float32, their scores
    segments: np.ndarray  # (n, 4) float64, kept segments as x_start, y_start, x_end, y_end


def _nearest_multiple(side: int, step: int) -> int:
    return max(step, (side + step // 2) // step * step)


def network_size(height: int, width: int) -> tuple[int, int]:
    """The network input size: each side rounded to the nearest multiple of 16 (at least 16)."""
    return _nearest_multiple(height, NETWORK_STRIDE), _nearest_multiple(width, NETWORK_STRIDE)


def decode_segments(
    tp_map: torch.Tensor, value_threshold: float, distance_threshold: float, top_k: int = TOP_K
) -> DecodedSegments:
    """Decode one TP map (``(C >= 5, h, w)``: centre logit, then start and end displacements).

    Follows the reference operation by operation (torch for the sigmoid, pooling and top-k, numpy
    float32 for lengths, float64 for coordinates) so that its results are bit-identical.
    """
    import torch
    from torch.nn import functional as F

    height, width = tp_map.shape[-2:]
    heat = torch.sigmoid(tp_map[0:1].float())
    local_max = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = (heat * (local_max == heat).float()).reshape(-1)
    scores, indices = torch.topk(heat, min(top_k, heat.numel()), dim=-1, largest=True)
    rows, columns = torch.div(indices, width, rounding_mode="floor"), torch.fmod(indices, width)
    centres = torch.stack((rows, columns), dim=-1).cpu().numpy()
    scores_np = scores.cpu().numpy()

    displacement = tp_map[1:5].float().cpu().numpy().transpose(1, 2, 0)  # h, w, (xs, ys, xe, ye)
    ys, xs = centres[:, 0], centres[:, 1]
    at_centres = displacement[ys, xs]
    lengths = np.sqrt(np.sum((at_centres[:, :2] - at_centres[:, 2:]) ** 2, axis=-1))
    kept = (scores_np > value_threshold) & (lengths > distance_threshold)
    # int64 positions plus float32 offsets promote to float64, as the reference's scalar sums do.
    x, y, offsets = xs[kept], ys[kept], at_centres[kept]
    segments = np.stack((x + offsets[:, 0], y + offsets[:, 1], x + offsets[:, 2], y + offsets[:, 3]), axis=-1)
    return DecodedSegments(centres, scores_np, segments.reshape(-1, 4))


def segments_to_lines(segments: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """TP-map segments to image pixels: x2 for the half-size map, then the resize ratio."""
    lines = 2 * segments
    lines[:, 0::2] *= scale_x
    lines[:, 1::2] *= scale_y
    return lines


def draw_lines(lines: np.ndarray, height: int, width: int) -> np.ndarray:
    """White 1-px segments on black (HxW uint8); endpoints truncate toward zero like ``int()``."""
    canvas = np.zeros((height, width), np.uint8)
    finite = lines[np.isfinite(lines).all(axis=1)]
    for x_start, y_start, x_end, y_end in np.trunc(finite).astype(np.int64).tolist():
        cv2.line(canvas, (x_start, y_start), (x_end, y_end), 255, 1)
    return canvas


def remap_mlsd_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The published file is a plain state dict whose names are the module's."""
    return dict(checkpoint)


class MLSD(NeuralAnnotator):
    name = "mlsd"
    description = "M-LSD straight line segments, white on black"
    Config = MLSDConfig
    grayscale = True
    weights = Weights(license="Apache-2.0 (NAVER M-LSD)", files=(WeightFile("mlsd_large_512_fp32.pth", remap_mlsd_checkpoint),))
    map_kind = "edges"

    config: MLSDConfig

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.mlsd import MLSDLarge

        return self.weights.load_into(MLSDLarge(), paths[0])

    def network_input(self, batch: list[np.ndarray]) -> torch.Tensor:
        """Same-shape RGB images to the network's ``(N, 4, H16, W16)`` input in [-1, 1]."""
        import torch

        height, width = batch[0].shape[:2]
        net_height, net_width = network_size(height, width)
        if (net_height, net_width) != (height, width):
            batch = [cv2.resize(image, (net_width, net_height), interpolation=cv2.INTER_AREA) for image in batch]
        rgb = self.to_tensor(batch)
        ones = torch.full_like(rgb[:, :1], 1.0)
        return torch.cat((rgb, ones), dim=1) / 127.5 - 1.0

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        height, width = batch[0].shape[:2]
        net_height, net_width = network_size(height, width)
        tp_maps = model(self.network_input(batch))
        maps = []
        for tp_map in tp_maps:
            decoded = decode_segments(tp_map, self.config.value_threshold, self.config.distance_threshold)
            lines = segments_to_lines(decoded.segments, width / net_width, height / net_height)
            maps.append(draw_lines(lines, height, width))
        return maps
