"""UniFormer-S with an UperNet head: the ADE20K segmenter behind ControlNet's ``seg`` condition.

Backbone: Li et al., "UniFormer: Unifying Convolution and Self-attention for Visual Recognition"
(ICLR 2022 / TPAMI 2023), the small model (widths 64/128/320/512, depths 3/4/8/3, 64-channel heads)
as configured for semantic segmentation (``windows=False``, ``hybrid=False``: plain global
self-attention in stages 3-4). Head: Xiao et al., "Unified Perceptual Parsing for Scene
Understanding" (ECCV 2018) as mmsegmentation's ``UPerHead`` (PPM scales 1/2/3/6, 512 channels,
BatchNorm, 150 classes). Written from the architecture's description, not from the upstream code.

Building blocks:

* ``PatchEmbed``: a k = s conv (4, then 2, 2, 2) and a LayerNorm (eps 1e-5) over channels.
* Stages 1-2, ``CBlock``: ``x + dwconv3x3(x)``; ``x + conv1x1(dwconv5x5(conv1x1(BN(x))))``;
  ``x + MLP(BN(x))`` with 1x1 convs and exact GELU.
* Stages 3-4, ``SABlock``: ``x + dwconv3x3(x)``, then on tokens ``x + MHSA(LN(x))`` and
  ``x + MLP(LN(x))`` (LayerNorm eps 1e-6, 64-channel heads, scale 1/8).
* Each stage output goes through a LayerNorm (eps 1e-6) over channels; the four are the head's input.
* UPerHead: PPM on stage 4 (adaptive average pools, 1x1 ConvBNReLU, bilinear back, concat, 3x3
  ``bottleneck``); 1x1 lateral ConvBNReLUs on stages 1-3; top-down sum with bilinear upsampling;
  3x3 ``fpn_convs``; everything upsampled to 1/4, concatenated, 3x3 ``fpn_bottleneck`` and a 1x1
  ``conv_seg`` to 150 logits at 1/4 resolution. Bilinear resizes use ``align_corners=False``.

:func:`remap_uniformer_checkpoint` reads ``upernet_global_small.pth`` (``{'state_dict', 'meta'}``)
into :class:`UniformerUperNet`; its auxiliary FCN head (training only) is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AUXILIARY_PREFIX", "UniformerUperNet", "remap_uniformer_checkpoint"]

#: the training-time auxiliary FCN head, which inference never runs
AUXILIARY_PREFIX = "auxiliary_head."

_WIDTHS = (64, 128, 320, 512)
_DEPTHS = (3, 4, 8, 3)
_HEAD_DIM = 64
_MLP_RATIO = 4
_TOKEN_EPS = 1e-6
_CHANNELS = 512
_POOL_SCALES = (1, 2, 3, 6)
NUM_CLASSES = 150


def _channel_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """A LayerNorm over the channels of an NCHW map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, patch: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(out_channels)
        self.proj = nn.Conv2d(in_channels, out_channels, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channel_layer_norm(self.norm, self.proj(x))


class ConvMlp(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels * _MLP_RATIO, 1)
        self.fc2 = nn.Conv2d(channels * _MLP_RATIO, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TokenMlp(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels * _MLP_RATIO)
        self.fc2 = nn.Linear(channels * _MLP_RATIO, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CBlock(nn.Module):
    """Local relation aggregator: depthwise convolutions in place of attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.attn = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = ConvMlp(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heads = channels // _HEAD_DIM
        self.qkv = nn.Linear(channels, channels * 3)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, _HEAD_DIM).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attention = ((q * _HEAD_DIM**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, channels))


class SABlock(nn.Module):
    """Global relation aggregator: multi-head self-attention over all tokens of the stage."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = nn.LayerNorm(channels, eps=_TOKEN_EPS)
        self.attn = Attention(channels)
        self.norm2 = nn.LayerNorm(channels, eps=_TOKEN_EPS)
        self.mlp = TokenMlp(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class UniFormer(nn.Module):
    """UniFormer-S returning the four normalised stage outputs (strides 4, 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__()
        in_channels = (3, *_WIDTHS[:-1])
        for stage, (cin, width, depth, patch) in enumerate(zip(in_channels, _WIDTHS, _DEPTHS, (4, 2, 2, 2)), start=1):
            block = CBlock if stage <= 2 else SABlock
            self.add_module(f"patch_embed{stage}", PatchEmbed(cin, width, patch))
            self.add_module(f"blocks{stage}", nn.Sequential(*(block(width) for _ in range(depth))))
            self.add_module(f"norm{stage}", nn.LayerNorm(width, eps=_TOKEN_EPS))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage in range(1, 5):
            x = getattr(self, f"blocks{stage}")(getattr(self, f"patch_embed{stage}")(x))
            outputs.append(_channel_layer_norm(getattr(self, f"norm{stage}"), x))
        return outputs


class ConvBNReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    def __init__(self, in_channels: Sequence[int] = _WIDTHS, channels: int = _CHANNELS, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(in_channels[-1], channels, 1)) for scale in _POOL_SCALES
        )
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(_POOL_SCALES) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(module(x), x.shape[2:]) for module in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        laterals.append(self.pyramid_pooling(features[-1]))
        for level in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[level - 1] = laterals[level - 1] + _resize(laterals[level], laterals[level - 1].shape[2:])
        outputs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]
        outputs.append(laterals[-1])
        size = outputs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outputs[0], *(_resize(o, size) for o in outputs[1:])], dim=1))
        return self.conv_seg(fused)


class UniformerUperNet(nn.Module):
    """Image (normalised, BGR) -> 150 ADE20K logits at 1/4 resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = UniFormer()
        self.decode_head = UPerHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x))


def remap_uniformer_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``upernet_global_small.pth`` (``{'state_dict': ..., 'meta': {'CLASSES', 'PALETTE'}}``, keys
    possibly prefixed ``module.``) in :class:`UniformerUperNet`'s names, which are the published
    ones. The ``auxiliary_head.*`` entries (the FCN head used only as a training loss) are dropped;
    every other key is kept, so that a strict load reports anything unexpected."""
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        key = key.removeprefix("module.")
        if not key.startswith(AUXILIARY_PREFIX):
            out[key] = value
    return out
