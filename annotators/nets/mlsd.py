"""M-LSD large: a MobileNetV2 trunk with a four-stage top-down head predicting line segments.

Architecture of ``MobileV2_MLSD_Large`` (Gu et al., "Towards Light-weight and Real-time Line Segment
Detection", AAAI 2022; NAVER, Apache-2.0), as used by ControlNet. Module and parameter names follow
the published ``mlsd_large_512_fp32.pth`` so its state dict loads without renaming.

The input is 4 channels (RGB plus a constant plane) at a size divisible by 16; the output is the
9-channel "TP map" at half the input size: channel 0 the segment-centre logit, 1-4 the start and
end displacements, 5-8 auxiliary maps the decoder ignores.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLSDLarge"]


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias), BatchNorm, ReLU6. Stride-2 convs pad one pixel on the right and bottom only,
    the TFLite "same" convention the weights were trained with."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = 0 if stride == 2 else (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: optional 1x1 expansion, 3x3 depthwise, linear 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Trunk(nn.Module):
    """The first 14 MobileNetV2 layers (up to the 96-channel stage), returning five feature maps:
    16 ch at 1/2, 24 at 1/4, 32 at 1/8, 64 and 96 at 1/16."""

    #: (expansion, channels, repeats, first stride) per stage, as in MobileNetV2's table 2
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
    TAPS = (1, 3, 6, 10, 13)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(4, 32, stride=2)]
        channels = 32
        for expansion, out_channels, repeats, stride in self.STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1, expansion))
                channels = out_channels
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.TAPS:
                taps.append(x)
        return taps


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FuseBlock(nn.Module):
    """Head "block type A": project the skip (``conv2``) and the deeper map (``conv1``, then x2
    bilinear with aligned corners when ``upscale``) to 64 channels each and concatenate them."""

    def __init__(self, skip_channels: int, deep_channels: int, upscale: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(deep_channels, 64, 1)
        self.conv2 = _conv_bn_relu(skip_channels, 64, 1)
        self.upscale = upscale

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = self.conv1(deep)
        if self.upscale:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(skip), deep), dim=1)


class RefineBlock(nn.Module):
    """Head "block type B": a residual 3x3 conv at 128 channels, then a 3x3 conv down to 64."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(128, 128, 3)
        self.conv2 = _conv_bn_relu(128, 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class PredictBlock(nn.Module):
    """Head "block type C": a dilation-5 3x3 conv, a 3x3 conv, and a 1x1 conv to 16 maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(64, 64, 3, dilation=5)
        self.conv2 = _conv_bn_relu(64, 64, 3)
        self.conv3 = nn.Conv2d(64, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class MLSDLarge(nn.Module):
    """``(N, 4, H, W)`` in [-1, 1], H and W divisible by 16 -> the ``(N, 9, H/2, W/2)`` TP map."""

    #: the 16 predicted maps start with 7 the released model does not use
    FIRST_OUTPUT_CHANNEL = 7

    def __init__(self) -> None:
        super().__init__()
        self.backbone = MobileNetV2Trunk()
        self.block15 = FuseBlock(64, 96, upscale=False)
        self.block16 = RefineBlock()
        self.block17 = FuseBlock(32, 64)
        self.block18 = RefineBlock()
        self.block19 = FuseBlock(24, 64)
        self.block20 = RefineBlock()
        self.block21 = FuseBlock(16, 64)
        self.block22 = RefineBlock()
        self.block23 = PredictBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half, quarter, eighth, sixteenth, deepest = self.backbone(x)
        x = self.block16(self.block15(sixteenth, deepest))
        x = self.block18(self.block17(eighth, x))
        x = self.block20(self.block19(quarter, x))
        x = self.block22(self.block21(half, x))
        return self.block23(x)[:, self.FIRST_OUTPUT_CHANNEL :]
