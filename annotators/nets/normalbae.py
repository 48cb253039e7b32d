"""NNET of Bae, Budvytis, Cipolla, "Estimating and Exploiting the Aleatoric Uncertainty in Surface
Normal Estimation" (ICCV 2021): an EfficientNet-B5 encoder and a U-Net decoder with BatchNorm that
predicts a unit normal and a concentration ``kappa`` at 1/8 resolution, refined at 1/4, 1/2 and full
resolution by per-pixel MLPs (inference mode: every pixel is refined, no sampling).

The encoder is ``tf_efficientnet_b5_ap`` as built by gen-efficientnet (TF "same" padding, BN eps
1e-3, swish), written here without timm/geffnet. :func:`remap_normalbae_checkpoint` maps the
published ``scannet.pt`` onto this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from annotators.nets.padding import pad_same

__all__ = ["NNET", "remap_normalbae_checkpoint"]

_BN_EPS_TF = 1e-3
#: EfficientNet-B5 stages: (expansion, kernel, stride, output channels, blocks) after the width (1.6)
#: and depth (2.2, rounded up) multipliers; expansion 1 marks the depthwise-separable first stage.
_B5_STAGES = ((1, 3, 1, 24, 3), (6, 3, 2, 40, 5), (6, 5, 2, 64, 5), (6, 3, 2, 128, 7), (6, 5, 1, 176, 7), (6, 5, 2, 304, 9), (6, 3, 1, 512, 3))
_STEM_CHANNELS = 48
_HEAD_CHANNELS = 2048


class _ConvSame(nn.Conv2d):
    """Bias-free convolution with TF "same" padding: static when stride 1, input-dependent otherwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS_TF)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class _DepthwiseSeparable(nn.Module):
    """First-stage block: depthwise, squeeze-excite, 1x1 project (gen-efficientnet's names)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = _ConvSame(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = _bn(in_channels)
        self.se = _SqueezeExcite(in_channels, in_channels // 4)
        self.conv_pw = _ConvSame(in_channels, out_channels, 1)
        self.bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
        return x + y if self.residual else y


class _InvertedResidual(nn.Module):
    """MBConv: 1x1 expand, depthwise, squeeze-excite, 1x1 project. The squeeze-excite width is a
    quarter of the block's input channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_channels * expansion
        self.conv_pw = _ConvSame(in_channels, mid, 1)
        self.bn1 = _bn(mid)
        self.conv_dw = _ConvSame(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.se = _SqueezeExcite(mid, in_channels // 4)
        self.conv_pwl = _ConvSame(mid, out_channels, 1)
        self.bn3 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn1(self.conv_pw(x)))
        y = self.se(F.silu(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.residual else y


class _EfficientNetB5(nn.Module):
    """Returns the outputs of stages 1, 2, 3 and 5 (strides 2, 4, 8, 16) and of the 1x1 head
    convolution (stride 32). The decoder takes the head convolution *before* its BatchNorm and swish
    (the reference indexes the encoder's module outputs that way), so those two are not built."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = _ConvSame(3, _STEM_CHANNELS, 3, stride=2)
        self.bn1 = _bn(_STEM_CHANNELS)
        stages = []
        in_channels = _STEM_CHANNELS
        for expansion, kernel, stride, out_channels, depth in _B5_STAGES:
            blocks: list[nn.Module] = []
            for index in range(depth):
                block_stride = stride if index == 0 else 1
                if expansion == 1:
                    blocks.append(_DepthwiseSeparable(in_channels, out_channels, kernel, block_stride))
                else:
                    blocks.append(_InvertedResidual(in_channels, out_channels, kernel, block_stride, expansion))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        self.conv_head = _ConvSame(in_channels, _HEAD_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.silu(self.bn1(self.conv_stem(x)))
        skips = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in (0, 1, 2, 4):
                skips.append(x)
        return [*skips, self.conv_head(x)]


class _UpSampleBN(nn.Module):
    """Upsample to the skip's size (bilinear, align_corners), concatenate, two conv-BN-LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.layers(torch.cat([x, skip], dim=1))


def _pixel_mlp(in_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(in_channels, 128, 1),
        nn.ReLU(),
        nn.Conv1d(128, 128, 1),
        nn.ReLU(),
        nn.Conv1d(128, 128, 1),
        nn.ReLU(),
        nn.Conv1d(128, 4, 1),
    )


def normalize_prediction(out: torch.Tensor) -> torch.Tensor:
    """(x, y, z, kappa) channels to a unit normal and a positive concentration (elu + 1.01)."""
    normal, kappa = out[:, :3], out[:, 3:]
    length = torch.sqrt((normal**2.0).sum(dim=1, keepdim=True)) + 1e-10
    return torch.cat([normal / length, F.elu(kappa) + 1.0 + 0.01], dim=1)


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(_HEAD_CHANNELS, _HEAD_CHANNELS, 1)
        self.up1 = _UpSampleBN(_HEAD_CHANNELS + 176, 1024)
        self.up2 = _UpSampleBN(1024 + 64, 512)
        self.up3 = _UpSampleBN(512 + 40, 256)
        self.up4 = _UpSampleBN(256 + 24, 128)
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4 = _pixel_mlp(512 + 4)
        self.out_conv_res2 = _pixel_mlp(256 + 4)
        self.out_conv_res1 = _pixel_mlp(128 + 4)

    @staticmethod
    def _refine(mlp: nn.Sequential, features: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Upsample features and the coarser prediction x2 and run the MLP on every pixel."""
        features = F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=True)
        coarse = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=True)
        stacked = torch.cat([features, coarse], dim=1)
        batch, _, height, width = stacked.shape
        return normalize_prediction(mlp(stacked.flatten(2))).view(batch, 4, height, width)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        block0, block1, block2, block3, block4 = features
        d1 = self.up1(self.conv2(block4), block3)
        d2 = self.up2(d1, block2)
        d3 = self.up3(d2, block1)
        d4 = self.up4(d3, block0)
        res8 = normalize_prediction(self.out_conv_res8(d2))
        res4 = self._refine(self.out_conv_res4, d2, res8)
        res2 = self._refine(self.out_conv_res2, d3, res4)
        res1 = self._refine(self.out_conv_res1, d4, res2)
        return [res8, res4, res2, res1]


class NNET(nn.Module):
    """ImageNet-normalised RGB (N, 3, H, W), H and W multiples of 8, to predictions at 1/8, 1/4, 1/2
    and full resolution, each (N, 4, h, w): unit normal (x, y, z) and kappa."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _EfficientNetB5()
        self.decoder = _Decoder()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.decoder(self.encoder(x))


_UNUSED = re.compile(r"^encoder\.original_model\.bn2\.")  # the head BatchNorm the decoder skips


def remap_normalbae_checkpoint(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """``scannet.pt`` (``{'model': state_dict}``, keys possibly prefixed ``module.``) in
    :class:`NNET`'s key names. Unknown keys are kept, so that a strict load reports them."""
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        checkpoint = checkpoint["model"]  # type: ignore[assignment]
    out: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        key = key.removeprefix("module.")
        if _UNUSED.match(key):
            continue
        key = key.replace("encoder.original_model.", "encoder.", 1)
        key = re.sub(r"^(decoder\.up[1-4])\._net\.", r"\1.layers.", key)
        out[key] = value  # type: ignore[assignment]
    return out
