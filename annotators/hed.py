"""HED soft edges and the scribbles derived from them, ControlNet's "HED boundary" and "fake scribble"
conditions (v1.0) and the v1.1 "softedge" and "scribble" preprocessors.

Method: S. Xie and Z. Tu, "Holistically-Nested Edge Detection" (ICCV 2015).
- ``hed``, ``fake_scribble`` (ControlNet v1.0): the original VGG-16 HED on BGR input, weights
  ``network-bsds500.pth`` from sniklaus' pytorch-hed port. **Those weights are GPL-licensed**
  (sniklaus/pytorch-hed; ControlNet's Apache-2.0 covers only its own code), so maps made with them
  are derived from GPL weights. ``fake_scribble`` thins, re-thickens and binarises the HED map as
  ``gradio_fake_scribble2image.py`` does.
- ``softedge_hed``, ``softedge_hedsafe``, ``scribble_hed`` (ControlNet v1.1): lllyasviel's re-trained
  ``ControlNetHED_Apache2`` on RGB input, weights ``ControlNetHED.pth``, released under Apache-2.0.
  The "safe" variant quantises the map into a few levels (``safe_step``), dropping the faint
  gradients that can carry hidden detail of the photograph; ``scribble_hed`` applies the v1.1
  ``gradio_scribble.py`` post-processing.
Output: white (soft or binary) edges on black, at the input size.
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
from annotators.ops import safe_step, scribble_from_soft_edges
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch

__all__ = [
    "HED",
    "FakeScribble",
    "SafeSoftEdgeConfig",
    "ScribbleConfig",
    "ScribbleHED",
    "SoftEdgeHED",
    "SoftEdgeHEDSafe",
    "SoftEdgeNetwork",
    "check_min_side",
    "scribble",
    "soft_edge_map",
    "to_uint8_map",
]

# Both HED networks max-pool four times, so each side must be at least 2**4 pixels.
_HED_MIN_SIDE = 16


@dataclass(frozen=True)
class ScribbleConfig(NeuralConfig):
    """Post-processing of a soft-edge map into scribble strokes; defaults are the reference's."""

    nms_threshold: int = param(127, "edge strength (0..255) an edge must exceed after thinning", ge=0, le=255)
    nms_sigma: float = param(3.0, "sigma of the blur before thinning the edges", gt=0.0, le=64.0)
    blur_sigma: float = param(3.0, "sigma of the blur that thickens the thinned edges into strokes", gt=0.0, le=64.0)
    stroke_threshold: int = param(4, "blurred strokes brighter than this become white", ge=0, le=254)


@dataclass(frozen=True)
class SafeSoftEdgeConfig(NeuralConfig):
    """The "safe" soft-edge variants' quantisation; the default is the reference's."""

    safe_steps: int = param(2, "quantisation levels above black of the 'safe' map", ge=1, le=255)


def check_min_side(batch: list[np.ndarray], min_side: int, network: str) -> None:
    """Refuse a same-shape batch whose images are too small for ``network``'s poolings."""
    height, width = batch[0].shape[:2]
    if min(height, width) < min_side:
        raise ValueError(f"{network} needs images of at least {min_side}x{min_side} pixels, got {width}x{height}")


def to_uint8_map(probability: np.ndarray) -> np.ndarray:
    """A [0, 1] map to uint8 by truncation, as the reference does (not rounding)."""
    return (probability * 255.0).clip(0, 255).astype(np.uint8)


def scribble(edges: np.ndarray, config: ScribbleConfig) -> np.ndarray:
    """Scribble strokes (HxW uint8, 255 / 0) from a uint8 soft-edge map, with ``config``'s settings."""
    return scribble_from_soft_edges(edges, config.nms_threshold, config.nms_sigma, config.blur_sigma, config.stroke_threshold)


def soft_edge_map(probability: np.ndarray, config: NeuralConfig) -> np.ndarray:
    """An HxW [0, 1] edge probability to the uint8 map of the variant that ``config`` selects: the
    quantised "safe" map, scribble strokes, or the plain soft edges."""
    if isinstance(config, SafeSoftEdgeConfig):
        return to_uint8_map(safe_step(probability, config.safe_steps))
    if isinstance(config, ScribbleConfig):
        return scribble(to_uint8_map(probability), config)
    return to_uint8_map(probability)


class SoftEdgeNetwork(NeuralAnnotator):
    """An edge network (HED, PiDiNet) whose variants differ only in their config, which picks the
    post-processing of :func:`soft_edge_map`; families implement ``_probabilities``."""

    grayscale = True
    map_kind = "soft_edges"

    def _probabilities(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        """Per image of a same-shape batch, the HxW edge probability in [0, 1]."""
        raise NotImplementedError

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> list[np.ndarray]:
        return [soft_edge_map(p, self.config) for p in self._probabilities(model, batch)]


class _HEDv10(SoftEdgeNetwork):
    """The v1.0 HED network (BGR input in [0, 1], sigmoid of the fused side outputs)."""

    weights = Weights(
        license="GPL (sniklaus/pytorch-hed port of the BSDS500 HED weights)",
        files=(WeightFile("network-bsds500.pth", "annotators.nets.hed:hed_network_state_dict"),),
    )

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.hed import HEDNetwork

        return self.weights.load_into(HEDNetwork(), paths[0])

    def _probabilities(self, model: torch.nn.Module, batch: list[np.ndarray]) -> np.ndarray:
        """(N, H, W) float32 edge probabilities."""
        check_min_side(batch, _HED_MIN_SIDE, "HED")
        bgr = self.to_tensor(batch).flip(1) / 255.0
        return model(bgr)[:, 0].float().cpu().numpy()


def _fused_probabilities_on_device(projections: list[torch.Tensor], height: int, width: int) -> np.ndarray:
    """The CPU path's resize, mean and float64 sigmoid, on the accelerator: copying five full-size
    maps per image to the CPU and resizing them there took 9 of 10 ms per image on a GPU. Torch's
    bilinear resize (half-pixel centres, edge clamp) is OpenCV's INTER_LINEAR up to float rounding."""
    import torch
    from torch.nn import functional as F

    resized = [F.interpolate(p.float(), size=(height, width), mode="bilinear", align_corners=False) for p in projections]
    mean = torch.cat(resized, dim=1).mean(dim=1)
    return torch.sigmoid(mean.double()).cpu().numpy()


class HED(_HEDv10):
    name = "hed"
    description = "HED soft edges (v1.0, original BSDS500 weights; GPL weights)"


class FakeScribble(_HEDv10):
    name = "fake_scribble"
    description = "Scribble strokes from v1.0 HED edges (GPL weights), white on black"
    Config = ScribbleConfig


class _HEDv11(SoftEdgeNetwork):
    """The v1.1 ControlNetHED network (raw RGB input minus a learned offset)."""

    weights = Weights(
        license="Apache-2.0 (lllyasviel's ControlNetHED_Apache2)",
        files=(WeightFile("ControlNetHED.pth", "annotators.nets.hed:controlnet_hed_state_dict"),),
    )

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.hed import ControlNetHED

        return self.weights.load_into(ControlNetHED(), paths[0])

    def _probabilities(self, model: torch.nn.Module, batch: list[np.ndarray]) -> list[np.ndarray]:
        """Per image, the HxW float64 edge probability: the five side outputs resized with OpenCV
        (bilinear, float32), averaged, then a float64 sigmoid, like the reference."""
        check_min_side(batch, _HED_MIN_SIDE, "ControlNetHED")
        height, width = batch[0].shape[:2]
        projections = model(self.to_tensor(batch))
        if self.torch_device.type != "cpu":
            return list(_fused_probabilities_on_device(projections, height, width))
        projections = [p[:, 0].float().cpu().numpy() for p in projections]
        maps = []
        for index in range(len(batch)):
            resized = [cv2.resize(p[index], (width, height), interpolation=cv2.INTER_LINEAR) for p in projections]
            mean = np.stack(resized, axis=2).mean(axis=2)
            maps.append(1.0 / (1.0 + np.exp(-mean.astype(np.float64))))
        return maps


class SoftEdgeHED(_HEDv11):
    name = "softedge_hed"
    description = "HED soft edges (v1.1 ControlNetHED, Apache-2.0 weights)"


class SoftEdgeHEDSafe(_HEDv11):
    name = "softedge_hedsafe"
    description = "HED soft edges quantised to a few levels (v1.1 'safe' variant)"
    Config = SafeSoftEdgeConfig


class ScribbleHED(_HEDv11):
    name = "scribble_hed"
    description = "Scribble strokes from v1.1 HED soft edges, white on black"
    Config = ScribbleConfig
