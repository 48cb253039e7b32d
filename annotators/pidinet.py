"""PiDiNet soft edges and scribbles, the ControlNet v1.1 ``softedge_pidinet`` preprocessors.

Method: Z. Su, W. Liu et al., "Pixel Difference Networks for Efficient Edge Detection" (ICCV 2021),
the authors' ``table5_pidinet`` model on BGR input in [0, 1]; the map is its fused side output.
Weights: ``table5_pidinet.pth`` from hellozhuo/pidinet, redistributed in lllyasviel/Annotators;
their licence is the MIT text preceded by the authors' note that the work is for research purposes
and commercial use needs their consent first. ``softedge_pidisafe`` quantises the map with
``safe_step``; ``scribble_pidinet`` applies the v1.1 ``gradio_scribble.py`` post-processing (thin,
blur, binarise) to the plain map.
Output: white (soft or binary) edges on black, at the input size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from annotators.hed import SafeSoftEdgeConfig, ScribbleConfig, SoftEdgeNetwork, check_min_side
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch

__all__ = ["ScribblePiDiNet", "SoftEdgePiDiNet", "SoftEdgePiDiNetSafe"]

# PiDiNet max-pools three times, so each side must be at least 2**3 pixels.
_MIN_SIDE = 8


class _PiDiNet(SoftEdgeNetwork):
    weights = Weights(
        license="MIT text with the authors' research-only note (hellozhuo/pidinet)",
        files=(WeightFile("table5_pidinet.pth", "annotators.nets.pidinet:pidinet_state_dict"),),
    )

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.pidinet import PiDiNet

        return self.weights.load_into(PiDiNet(), paths[0])

    def _probabilities(self, model: torch.nn.Module, batch: list[np.ndarray]) -> np.ndarray:
        """(N, H, W) float32 fused edge probabilities."""
        check_min_side(batch, _MIN_SIDE, "PiDiNet")
        bgr = self.to_tensor(batch).flip(1) / 255.0
        return model(bgr)[-1][:, 0].float().cpu().numpy()


class SoftEdgePiDiNet(_PiDiNet):
    name = "softedge_pidinet"
    description = "PiDiNet soft edges (v1.1)"


class SoftEdgePiDiNetSafe(_PiDiNet):
    name = "softedge_pidisafe"
    description = "PiDiNet soft edges quantised to a few levels (v1.1 'safe' variant)"
    Config = SafeSoftEdgeConfig


class ScribblePiDiNet(_PiDiNet):
    name = "scribble_pidinet"
    description = "Scribble strokes from PiDiNet soft edges (v1.1), white on black"
    Config = ScribbleConfig
