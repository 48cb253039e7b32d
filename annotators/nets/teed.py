"""TEED, the Tiny and Efficient Edge Detector (X. Soria, Y. Li, M. Rouhani and A. D. Sappa, "Tiny and
Efficient Model for the Edge Detection Generalization", ICCV 2023 workshops): 58,910 parameters.

The network, as the paper describes it and the authors' ``ted.py`` builds it:
- block 1: two 3x3 convolutions (3 -> 16, the first with stride 2), each followed by Smish;
- block 2: two 3x3 convolutions (16 -> 32), Smish between them only;
- block 2 is max-pooled (3x3, stride 2) to a quarter of the input size and added to a strided 1x1
  projection of block 1 (skip 1); one dense layer (32 -> 48) takes Smish of that sum and returns the
  mean of its output and a 1x1 projection (skip 2) of the pooled block 2;
- one upsampling head per block: per factor of 2, a 1x1 convolution (to 16 channels, 1 at the last
  level), Smish and a stride-2 transposed convolution (kernel 2 for one level, kernels 4 with padding
  1 for two), each giving a one-channel map at the input size;
- "double fusion" of the three maps: two depthwise 3x3 convolutions (3 -> 24, 24 -> 24), each after
  Smish, whose outputs are added and summed over channels, then Smish.
Smish(x) = x tanh(log(1 + sigmoid(x))) (X. Wang, H. Ren and A. Wang, Electronics 11(4), 2022).

The published checkpoints (``7_model.pth``) use the authors' module names; :func:`remap_teed_checkpoint`
renames them to this module's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["TEED", "remap_teed_checkpoint", "smish"]


def smish(x: torch.Tensor) -> torch.Tensor:
    """x tanh(log(1 + sigmoid(x))), written as the authors compute it (no log1p) to keep their rounding."""
    return x * torch.tanh(torch.log(1 + torch.sigmoid(x)))


class ConvPair(nn.Module):
    """Two 3x3 convolutions with Smish after the first and, unless ``last_activation`` is False, the second."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, last_activation: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.last_activation = last_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(smish(self.conv1(x)))
        return smish(x) if self.last_activation else x


class DenseLayer(nn.Module):
    """One dense layer: 3x3 (padding 2), Smish, 3x3 (no padding) on Smish of ``x``; averaged with ``skip``."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=2)
        self.conv2 = nn.Conv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.conv2(smish(self.conv1(smish(x)))) + skip)


class UpsampleLevel(nn.Module):
    """1x1 projection, Smish, and a stride-2 transposed convolution."""

    def __init__(self, in_channels: int, channels: int, kernel: int, padding: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, channels, 1)
        self.upsample = nn.ConvTranspose2d(channels, channels, kernel, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(smish(self.project(x)))


# An upsampling head's hidden channels; its kernels are 2**levels at every level, with the padding
# that makes each level exactly x2.
_UPSAMPLE_HIDDEN = 16
_UPSAMPLE_PADDING = {1: 0, 2: 1}


class UpsampleHead(nn.Module):
    """``levels`` doublings of a block's features down to a one-channel map."""

    def __init__(self, in_channels: int, levels: int) -> None:
        super().__init__()
        layers = []
        for level in range(levels):
            channels = 1 if level == levels - 1 else _UPSAMPLE_HIDDEN
            layers.append(UpsampleLevel(in_channels, channels, 2**levels, _UPSAMPLE_PADDING[levels]))
            in_channels = channels
        self.levels = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels(x)


class DoubleFusion(nn.Module):
    """The three side maps fused by two depthwise convolutions into one map."""

    def __init__(self, maps: int = 3, expansion: int = 8) -> None:
        super().__init__()
        channels = maps * expansion
        self.depthwise1 = nn.Conv2d(maps, channels, 3, padding=1, groups=maps)
        self.depthwise2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.depthwise1(smish(x))
        second = self.depthwise2(smish(first))
        return smish((second + first).sum(dim=1, keepdim=True))


class TEED(nn.Module):
    """TEED on raw 0..255 RGB (N, 3, H, W), H and W multiples of 4: the three side maps and the fused
    map, each (N, 1, H, W) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = ConvPair(3, 16, stride=2)
        self.block2 = ConvPair(16, 32, last_activation=False)
        self.dense = DenseLayer(32, 48)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.skip1 = nn.Conv2d(16, 32, 1, stride=2)
        self.skip2 = nn.Conv2d(32, 48, 1)
        self.up1 = UpsampleHead(16, 1)
        self.up2 = UpsampleHead(32, 1)
        self.up3 = UpsampleHead(48, 2)
        self.fusion = DoubleFusion()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        block1 = self.block1(x)
        block2 = self.block2(block1)
        pooled = self.pool(block2)
        block3 = self.dense(pooled + self.skip1(block1), self.skip2(pooled))
        sides = [self.up1(block1), self.up2(block2), self.up3(block3)]
        return [*sides, self.fusion(torch.cat(sides, dim=1))]


# The authors' module names (left) to this module's (right); group 1 is kept.
_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^block_1\.(conv[12]\.)", r"block1.\1"),
        (r"^block_2\.(conv[12]\.)", r"block2.\1"),
        (r"^dblock_3\.denselayer1\.(conv[12]\.)", r"dense.\1"),
        (r"^side_1\.conv\.", "skip1."),
        (r"^pre_dense_3\.conv\.", "skip2."),
        (r"^block_cat\.DWconv([12])\.", r"fusion.depthwise\1."),
    )
)
# An upsampling head's layers are a flat Sequential there: per level, conv, Smish, transposed conv.
_UP_BLOCK = re.compile(r"^up_block_([123])\.features\.(\d+)\.")


def remap_teed_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The published TEED state dict (``7_model.pth``, the authors' ``TED`` names) with this module's
    names; keys that match nothing keep their name, so the strict load reports them."""
    renamed = {}
    for key, value in checkpoint.items():
        new = key
        if match := _UP_BLOCK.match(key):
            head, index = match.group(1), int(match.group(2))
            layer = {0: "project", 2: "upsample"}.get(index % 3)
            if layer is not None:
                new = f"up{head}.levels.{index // 3}.{layer}." + key[match.end() :]
        else:
            for pattern, replacement in _RENAMES:
                if pattern.match(key):
                    new = pattern.sub(replacement, key)
                    break
        renamed[new] = value
    return renamed
