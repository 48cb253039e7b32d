"""PiDiNet, the pixel-difference edge network, with its convolutions converted for inference.

Method: Z. Su, W. Liu et al., "Pixel Difference Networks for Efficient Edge Detection" (ICCV 2021),
the ``table5_pidinet`` model (60 channels, ``carv4`` layer pattern, compact dilation and spatial
attention modules) that ControlNet v1.1 uses as its soft-edge annotator. Weights:
``table5_pidinet.pth`` from the authors (hellozhuo/pidinet), redistributed in lllyasviel/Annotators.

A pixel-difference convolution is linear in its 3x3 weights, so it equals a plain convolution with
rearranged weights: angular difference (ad) subtracts a clockwise-rotated copy of the kernel and
radial difference (rd) spreads the kernel over a 5x5 ring; :func:`pidinet_state_dict` does that
once at load time, as the authors do for deployment. Central difference (cd) could be folded into
the kernel's centre tap too, but it is kept as the reference computes it, a convolution minus the
kernel-sum times the centre pixel: the folded form is equal in exact arithmetic, yet in float32 it
moved the seeded parity model's fused sigmoid by up to 6e-3 (the reference's own rounding noise),
well past the 1e-3 tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PiDiNet", "convert_pdc_weight", "pdc_conv", "pidinet_state_dict"]

#: Pixel-difference type of the 16 layers (init block, then the 15 PDC blocks) of ``carv4``.
CARV4 = ("cd", "ad", "rd", "cv") * 4
_STAGE_CHANNELS = (60, 120, 240, 240)
_STAGE_BLOCKS = (3, 4, 4, 4)
_SIDE_CHANNELS = 24  # the ``dil`` option: width of the dilation and attention modules
_DILATIONS = (5, 7, 9, 11)
_ATTENTION_CHANNELS = 4

# Angular difference: each tap minus its clockwise neighbour on the 3x3 ring (row-major indices).
_CLOCKWISE_NEIGHBOUR = (3, 0, 1, 6, 4, 2, 7, 8, 5)
# Radial difference: taps 1..8 of the 3x3 kernel (row-major) go, with their sign, to these 5x5 taps.
_RD_OUTER = (0, 2, 4, 10, 14, 20, 22, 24)
_RD_INNER = (6, 7, 8, 11, 13, 16, 17, 18)


def convert_pdc_weight(pdc: str, weight: torch.Tensor) -> torch.Tensor:
    """The kernel the module holds for pixel-difference convolution ``pdc`` with 3x3 ``weight``: the
    equivalent plain kernel for ad and rd (5x5 for rd), the weight itself for cv and cd."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"a pixel-difference convolution has a 3x3 kernel, got weights of shape {tuple(weight.shape)}")
    out_channels, in_channels = weight.shape[:2]
    flat = weight.reshape(out_channels, in_channels, 9)
    if pdc in ("cv", "cd"):
        return weight
    if pdc == "ad":
        return (flat - flat[:, :, list(_CLOCKWISE_NEIGHBOUR)]).reshape(weight.shape)
    if pdc == "rd":
        # The reference uses taps 1..8 (tap 0 unused, the centre tap 4 included) as the eight rays.
        ring = flat.new_zeros(out_channels, in_channels, 25)
        ring[:, :, list(_RD_OUTER)] = flat[:, :, 1:]
        ring[:, :, list(_RD_INNER)] = -flat[:, :, 1:]
        return ring.reshape(out_channels, in_channels, 5, 5)
    raise ValueError(f"unknown pixel-difference convolution {pdc!r}")


class _CentralDifferenceConv(nn.Conv2d):
    """3x3 central-difference convolution (no bias): the plain convolution minus, per output, the
    kernel's sum times the centre pixel, as two convolutions like the reference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = F.conv2d(x, self.weight.sum(dim=(2, 3), keepdim=True), groups=self.groups)
        return super().forward(x) - centre


def pdc_conv(pdc: str, in_channels: int, out_channels: int, groups: int) -> nn.Conv2d:
    """The (converted) convolution of a carv4 layer, without bias."""
    if pdc == "cd":
        return _CentralDifferenceConv(in_channels, out_channels, 3, padding=1, groups=groups, bias=False)
    size = 5 if pdc == "rd" else 3
    return nn.Conv2d(in_channels, out_channels, size, padding=size // 2, groups=groups, bias=False)


class _PDCBlock(nn.Module):
    """Residual block: [2x2 max-pool,] depthwise pixel-difference conv, ReLU, pointwise conv, plus
    the input (through a 1x1 conv when the block downsamples)."""

    def __init__(self, pdc: str, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.depthwise = pdc_conv(pdc, in_channels, in_channels, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        return self.pointwise(F.relu(self.depthwise(x))) + self.shortcut(x)


class _SideOutput(nn.Module):
    """One stage's edge logits: compact dilation module (CDCM), compact spatial attention (CSAM),
    then a 1x1 reduction to one channel."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.compress = nn.Conv2d(in_channels, _SIDE_CHANNELS, 1)
        self.dilated = nn.ModuleList(
            nn.Conv2d(_SIDE_CHANNELS, _SIDE_CHANNELS, 3, padding=d, dilation=d, bias=False) for d in _DILATIONS
        )
        self.attention_hidden = nn.Conv2d(_SIDE_CHANNELS, _ATTENTION_CHANNELS, 1)
        self.attention_map = nn.Conv2d(_ATTENTION_CHANNELS, 1, 3, padding=1, bias=False)
        self.reduce = nn.Conv2d(_SIDE_CHANNELS, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.compress(F.relu(x))
        branches = [conv(x) for conv in self.dilated]
        x = branches[0] + branches[1] + branches[2] + branches[3]
        attention = torch.sigmoid(self.attention_map(self.attention_hidden(F.relu(x))))
        return self.reduce(x * attention)


class PiDiNet(nn.Module):
    """``table5_pidinet`` with ad/rd convolutions converted. Takes BGR in [0, 1]; returns the sigmoids of
    the four side outputs (upsampled to the input size) and of their fusion, fused last."""

    def __init__(self) -> None:
        super().__init__()
        self.init_block = pdc_conv(CARV4[0], 3, _STAGE_CHANNELS[0], groups=1)
        stages, layer, in_channels = [], 1, _STAGE_CHANNELS[0]
        for index, (channels, count) in enumerate(zip(_STAGE_CHANNELS, _STAGE_BLOCKS)):
            blocks = []
            for b in range(count):
                downsample = index > 0 and b == 0
                blocks.append(_PDCBlock(CARV4[layer], in_channels, channels, downsample))
                in_channels = channels
                layer += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.sides = nn.ModuleList(_SideOutput(c) for c in _STAGE_CHANNELS)
        self.fuse = nn.Conv2d(len(_STAGE_CHANNELS), 1, 1)

    def forward(self, bgr: torch.Tensor) -> list[torch.Tensor]:
        size = bgr.shape[2:]
        x = self.init_block(bgr)
        logits = []
        for stage, side in zip(self.stages, self.sides):
            x = stage(x)
            logits.append(F.interpolate(side(x), size=size, mode="bilinear", align_corners=False))
        logits.append(self.fuse(torch.cat(logits, dim=1)))
        return [torch.sigmoid(t) for t in logits]


def _block_names() -> list[tuple[str, str, int]]:
    """(published block name, module path, carv4 layer index) of the 15 PDC blocks."""
    names, layer = [], 1
    for stage, count in enumerate(_STAGE_BLOCKS):
        for b in range(count):
            names.append((f"block{stage + 1}_{b + 1}", f"stages.{stage}.{b}", layer))
            layer += 1
    return names


def pidinet_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The published training checkpoint (``{'state_dict': {'module.' + key: tensor}}``, or its
    unwrapped form) to :class:`PiDiNet` keys, with the ad and rd kernels converted."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a state dict under 'state_dict', got {type(state).__name__}")
    source: dict[str, torch.Tensor] = {k.removeprefix("module."): v for k, v in state.items()}
    renames: dict[str, tuple[str, str | None]] = {"init_block.weight": ("init_block.weight", CARV4[0])}
    for published, path, layer in _block_names():
        renames[f"{published}.conv1.weight"] = (f"{path}.depthwise.weight", CARV4[layer])
        renames[f"{published}.conv2.weight"] = (f"{path}.pointwise.weight", None)
        for p in ("weight", "bias"):
            renames[f"{published}.shortcut.{p}"] = (f"{path}.shortcut.{p}", None)
    for i in range(len(_STAGE_CHANNELS)):
        for p in ("weight", "bias"):
            renames[f"dilations.{i}.conv1.{p}"] = (f"sides.{i}.compress.{p}", None)
            renames[f"attentions.{i}.conv1.{p}"] = (f"sides.{i}.attention_hidden.{p}", None)
            renames[f"conv_reduces.{i}.conv.{p}"] = (f"sides.{i}.reduce.{p}", None)
        renames[f"attentions.{i}.conv2.weight"] = (f"sides.{i}.attention_map.weight", None)
        for k in range(len(_DILATIONS)):
            renames[f"dilations.{i}.conv2_{k + 1}.weight"] = (f"sides.{i}.dilated.{k}.weight", None)
    renames["classifier.weight"] = ("fuse.weight", None)
    renames["classifier.bias"] = ("fuse.bias", None)

    out = {}
    for key, value in source.items():
        if key not in renames:
            out[key] = value  # left for load_strict to report as unexpected
            continue
        name, pdc = renames[key]
        out[name] = value if pdc is None else convert_pdc_weight(pdc, value)
    return out
