"""The two HED (holistically-nested edge detection) networks used by ControlNet.

``HEDNetwork``: the VGG-16 HED of S. Xie and Z. Tu, "Holistically-Nested Edge Detection" (ICCV 2015),
in the layout of sniklaus' pytorch-hed port whose BSDS500 weights (``network-bsds500.pth``, GPL) the
ControlNet v1.0 annotator used. ``ControlNetHED``: lllyasviel's re-trained variant
(``ControlNetHED_Apache2``, weights ``ControlNetHED.pth`` under Apache-2.0) with five plain
convolution blocks, RGB input in 0..255 and a learned input offset; its side outputs are fused by the
annotator, not by the network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ControlNetHED", "HEDNetwork", "controlnet_hed_state_dict", "hed_network_state_dict"]

# Output channels and convolution count of the five VGG-16 stages.
_VGG_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# Caffe VGG's BGR pixel means, which the HED weights were trained with.
_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
# Stage names of the pytorch-hed checkpoint, in order.
_STAGE_NAMES = ("One", "Two", "Thr", "Fou", "Fiv")


def _conv_stage(in_channels: int, out_channels: int, convs: int, pool: bool) -> nn.Sequential:
    """[2x2 max-pool,] then ``convs`` 3x3 convolutions, each followed by a ReLU."""
    layers: list[nn.Module] = [nn.MaxPool2d(kernel_size=2, stride=2)] if pool else []
    for i in range(convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


class HEDNetwork(nn.Module):
    """HED v1.0: takes BGR in [0, 1], returns the fused edge probability (N, 1, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        stages, scores = [], []
        in_channels = 3
        for index, (channels, convs) in enumerate(_VGG_STAGES):
            stages.append(_conv_stage(in_channels, channels, convs, pool=index > 0))
            scores.append(nn.Conv2d(channels, 1, kernel_size=1))
            in_channels = channels
        self.stages = nn.ModuleList(stages)
        self.scores = nn.ModuleList(scores)
        self.combine = nn.Conv2d(len(stages), 1, kernel_size=1)

    def side_scores(self, bgr: torch.Tensor) -> list[torch.Tensor]:
        """The five per-stage score maps (logits) at their own resolutions, full to 1/16."""
        # The reference scales [0, 1] input back to 0..255 rather than dividing by 255 once; the
        # round trip is kept because it is not exact in float32.
        mean = torch.tensor(_BGR_MEAN, dtype=bgr.dtype, device=bgr.device).view(1, 3, 1, 1)
        h = bgr * 255.0 - mean
        scores = []
        for stage, score in zip(self.stages, self.scores):
            h = stage(h)
            scores.append(score(h))
        return scores

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        size = bgr.shape[2:]
        upsampled = [F.interpolate(s, size=size, mode="bilinear", align_corners=False) for s in self.side_scores(bgr)]
        return torch.sigmoid(self.combine(torch.cat(upsampled, dim=1)))


def hed_network_state_dict(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorch-hed keys (``moduleVggOne.0.weight``, ``moduleScoreTwo.bias``, ``moduleCombine.0.weight``;
    ControlNet's renamed ``net*`` form too) to :class:`HEDNetwork` keys."""
    pattern = re.compile(r"^(?:module|net)(Vgg|Score)(One|Two|Thr|Fou|Fiv)\.(.+)$|^(?:module|net)Combine\.0\.(.+)$")
    out = {}
    for key, value in checkpoint.items():
        match = pattern.match(key)
        if match is None:
            out[key] = value  # left for load_strict to report as unexpected
        elif match[4] is not None:
            out[f"combine.{match[4]}"] = value
        else:
            group = "stages" if match[1] == "Vgg" else "scores"
            out[f"{group}.{_STAGE_NAMES.index(match[2])}.{match[3]}"] = value
    return out


class _ConvBlock(nn.Module):
    """ControlNetHED block: 3x3 convolutions with ReLUs, and a 1x1 projection to one side output."""

    def __init__(self, in_channels: int, out_channels: int, convs: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1) for i in range(convs)
        )
        self.projection = nn.Conv2d(out_channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class ControlNetHED(nn.Module):
    """HED v1.1 (``ControlNetHED_Apache2``): takes RGB in 0..255, returns the five side-output logits
    at full, 1/2, 1/4, 1/8 and 1/16 resolution (floored)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        blocks, in_channels = [], 3
        for channels, convs in _VGG_STAGES:
            blocks.append(_ConvBlock(in_channels, channels, convs))
            in_channels = channels
        self.blocks = nn.ModuleList(blocks)

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        h = rgb - self.norm
        projections = []
        for index, block in enumerate(self.blocks):
            if index > 0:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            h, projection = block(h)
            projections.append(projection)
        return projections


def controlnet_hed_state_dict(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``ControlNetHED.pth`` keys (``block3.convs.2.weight``) to :class:`ControlNetHED` keys."""
    pattern = re.compile(r"^block([1-5])\.(.+)$")
    out = {}
    for key, value in checkpoint.items():
        match = pattern.match(key)
        out[f"blocks.{int(match[1]) - 1}.{match[2]}" if match else key] = value
    return out
