"""The informative-drawings sketch generator used by the v1.1 line-art annotators.

Architecture: the ResNet-style image-to-image generator of Chan, Durand and Isola, "Learning to
generate line drawings that convey geometry and semantics" (CVPR 2022, code MIT), built as
ControlNet v1.1 builds it: ``Generator(3, 1, n_residual_blocks=3)``. Reflection-padded 7x7 conv,
two stride-2 convs, residual blocks at 256 channels, two transposed convs back up, a 7x7 conv to
one channel and a sigmoid. InstanceNorm has no affine parameters and no running statistics.
Module names follow ``sk_model.pth`` / ``sk_model2.pth``.

Spatial sizes must be multiples of 4 (at least 8) for the output to have the input's size.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LineartGenerator"]


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """``(N, 3, H, W)`` RGB in [0, 1] -> ``(N, 1, H, W)`` line map in (0, 1), dark lines on light."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, residual_blocks: int = 3) -> None:
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, 64, 7), _norm(64), nn.ReLU(inplace=True))
        self.model1 = nn.Sequential(
            nn.Conv2d(64, 128, 3, stride=2, padding=1), _norm(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 256, 3, stride=2, padding=1), _norm(256), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.model2 = nn.Sequential(*(ResidualBlock(256) for _ in range(residual_blocks)))
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), _norm(128), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), _norm(64), nn.ReLU(inplace=True),
        )  # fmt: skip
        # The published model ends with a sigmoid inside model4; it has no parameters, so it is
        # applied in forward() instead, which lets logits() expose the value before it.
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, out_channels, 7))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))
