"""DPT-Hybrid (MiDaS v3 ``dpt_hybrid``): a ResNet-50 stem and first three stages feeding a ViT-B/16,
reassembled at four scales and fused by RefineNet blocks into a dense relative inverse depth.

Ranftl, Bochkovskiy, Koltun, "Vision Transformers for Dense Prediction" (ICCV 2021). The layers
follow the MiDaS ``DPTDepthModel(backbone="vitb_rn50_384", readout="project", non_negative=True)``
with timm's ``vit_base_resnet50_384`` backbone (weight-standardised convolutions with TF "same"
padding and GroupNorm), written here without timm. :func:`remap_midas_checkpoint` maps the
published MiDaS checkpoint (timm and MiDaS key names), or its transformers conversion, onto this
module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from annotators.nets.keys import Rule, rename_key
from annotators.nets.padding import pad_same

__all__ = ["DPTHybrid", "remap_midas_checkpoint"]

_GROUPS = 32
_VIT_DIM = 768
_VIT_DEPTH = 12
_VIT_HEADS = 12
_HOOK_BLOCKS = (8, 11)  # ViT blocks whose outputs become the two coarse DPT feature maps
_PATCH = 16  # the ResNet reduces by 16, so every ViT token covers 16x16 pixels
#: Input sides must be multiples of this: the stride-2 convolution on the deepest feature map and
#: the x2 upsamplings of the fusion blocks only line up when each side is divisible by 32.
SIZE_MULTIPLE = 32


class StdConv2dSame(nn.Conv2d):
    """Bias-free convolution with weight standardisation (per output channel, biased variance,
    eps 1e-8) and input-dependent "SAME" padding when strided, as in BiT/timm's ``StdConv2dSame``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        # With stride 1 and an odd kernel "SAME" is the usual symmetric padding.
        padding = (kernel_size - 1) // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.eps = 1e-8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        # In float32 whatever the compute dtype: eps 1e-8 and the statistics need the precision.
        flat = self.weight.float().reshape(self.out_channels, -1)
        var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
        weight = ((flat - mean) * torch.rsqrt(var + self.eps)).reshape_as(self.weight).to(x.dtype)
        return F.conv2d(x, weight, None, self.stride, self.padding)


class _ConvNorm(nn.Module):
    """Standardised convolution + GroupNorm(32), with a ReLU unless it feeds a residual sum."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.conv = StdConv2dSame(in_channels, out_channels, kernel_size, stride)
        self.norm = nn.GroupNorm(_GROUPS, out_channels, eps=1e-5)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.relu(x) if self.relu else x


class _Bottleneck(nn.Module):
    """Post-activation ResNet bottleneck (1x1, strided 3x3, 1x1) with a projection shortcut on the
    first block of a stage."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        mid = out_channels // 4
        self.downsample = _ConvNorm(in_channels, out_channels, 1, stride, relu=False) if in_channels != out_channels else None
        self.unit1 = _ConvNorm(in_channels, mid, 1)
        self.unit2 = _ConvNorm(mid, mid, 3, stride)
        self.unit3 = _ConvNorm(mid, out_channels, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.unit3(self.unit2(self.unit1(x))) + shortcut)


class _ResNetStem(nn.Module):
    """ResNet-50 stem and stages 1-3 (3, 4 and 9 blocks); returns each stage's output (stride 4, 8, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvNorm(3, 64, 7, stride=2)
        widths, depths = (256, 512, 1024), (3, 4, 9)
        stages = []
        in_channels = 64
        for index, (width, depth) in enumerate(zip(widths, depths)):
            stride = 1 if index == 0 else 2
            blocks = [_Bottleneck(in_channels if i == 0 else width, width, stride if i == 0 else 1) for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        # 3x3/2 max-pool with "SAME" padding: padded cells are -inf, so they never win.
        x = F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _TransformerBlock(nn.Module):
    """Pre-norm ViT block (LayerNorm eps 1e-6, exact GELU)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Reassemble(nn.Module):
    """Tokens back to a feature map: each patch token is concatenated with the class token and
    projected (readout "project", with GELU), laid out on the patch grid and convolved."""

    def __init__(self, dim: int, downsample: bool) -> None:
        super().__init__()
        self.readout = nn.Linear(2 * dim, dim)
        self.conv = nn.Conv2d(dim, dim, 1)
        self.down = nn.Conv2d(dim, dim, 3, stride=2, padding=1) if downsample else None

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        cls, patches = tokens[:, :1], tokens[:, 1:]
        x = F.gelu(self.readout(torch.cat((patches, cls.expand_as(patches)), dim=-1)))
        x = self.conv(x.transpose(1, 2).unflatten(2, grid))
        return x if self.down is None else self.down(x)


class _ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _FusionBlock(nn.Module):
    """RefineNet-style fusion: add the refined skip feature, refine, upsample x2 (align_corners),
    project with a 1x1 convolution."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.skip_unit = _ResidualConvUnit(features)
        self.unit = _ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHybrid(nn.Module):
    """Image (N, 3, H, W) in [-1, 1], H and W multiples of :data:`SIZE_MULTIPLE`, to non-negative
    relative inverse depth (N, H, W).

    Submodules worth hooking: ``layer_rn[i]`` (the four 256-channel feature maps entering the
    fusion), ``head[4]`` (the depth before the final ReLU).
    """

    def __init__(self, features: int = 256) -> None:
        super().__init__()
        self.resnet = _ResNetStem()
        self.patch_proj = nn.Conv2d(1024, _VIT_DIM, 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, _VIT_DIM))
        # Trained on a 24x24 grid at 384 px; resized to each input's grid in forward.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + 24 * 24, _VIT_DIM))
        self.blocks = nn.ModuleList(_TransformerBlock(_VIT_DIM, _VIT_HEADS) for _ in range(_VIT_DEPTH))
        self.reassemble = nn.ModuleList([_Reassemble(_VIT_DIM, downsample=False), _Reassemble(_VIT_DIM, downsample=True)])
        self.layer_rn = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in (256, 512, _VIT_DIM, _VIT_DIM))
        self.fusion = nn.ModuleList(_FusionBlock(features) for _ in range(4))
        self.head = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
            nn.ReLU(),
        )

    def _position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[0, 1:]
        side = math.isqrt(grid_pos.shape[0])
        grid_pos = grid_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=grid, mode="bilinear", align_corners=False)
        return torch.cat((cls_pos, grid_pos.flatten(2).transpose(1, 2)), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(f"DPTHybrid needs sides divisible by {SIZE_MULTIPLE}, got {height}x{width}")
        grid = (height // _PATCH, width // _PATCH)
        stage1, stage2, stage3 = self.resnet(x)
        tokens = self.patch_proj(stage3).flatten(2).transpose(1, 2)
        tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self._position_embedding(grid)
        hooked = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in _HOOK_BLOCKS:
                hooked.append(tokens)
        layers = [stage1, stage2] + [reassemble(t, grid) for reassemble, t in zip(self.reassemble, hooked)]
        layer1, layer2, layer3, layer4 = (conv(layer) for conv, layer in zip(self.layer_rn, layers))
        path = self.fusion[3](layer4)
        path = self.fusion[2](path, layer3)
        path = self.fusion[1](path, layer2)
        path = self.fusion[0](path, layer1)
        return self.head(path).squeeze(1)


_FUSION_PARTS = {
    "resConfUnit1": "skip_unit", "resConfUnit2": "unit", "out_conv": "out_conv",
    "residual_layer1": "skip_unit", "residual_layer2": "unit", "projection": "out_conv",
}

# Published MiDaS names (timm backbone under ``pretrained.model``, DPT parts under
# ``pretrained.act_postprocess*`` and ``scratch``) -> this module's names; first match wins.
_MIDAS_RULES: tuple[Rule, ...] = (
    (r"^pretrained\.model\.patch_embed\.backbone\.stem\.(conv|norm)\.", r"resnet.stem.\1."),
    (r"^pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.downsample\.", r"resnet.stages.\1.\2.downsample."),
    (r"^pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.(conv|norm)([123])\.", r"resnet.stages.\1.\2.unit\4.\3."),
    (r"^pretrained\.model\.patch_embed\.proj\.", "patch_proj."),
    (r"^pretrained\.model\.(cls_token|pos_embed)$", r"\1"),
    (r"^pretrained\.model\.blocks\.", "blocks."),
    (r"^pretrained\.act_postprocess([34])\.0\.project\.0\.", lambda m: f"reassemble.{int(m[1]) - 3}.readout."),
    (r"^pretrained\.act_postprocess([34])\.3\.", lambda m: f"reassemble.{int(m[1]) - 3}.conv."),
    (r"^pretrained\.act_postprocess4\.4\.", "reassemble.1.down."),
    (r"^scratch\.layer([1-4])_rn\.", lambda m: f"layer_rn.{int(m[1]) - 1}."),
    (r"^scratch\.refinenet([1-4])\.(\w+)\.", lambda m: f"fusion.{int(m[1]) - 1}.{_FUSION_PARTS.get(m[2], m[2])}."),
    (r"^scratch\.output_conv\.", "head."),
)
# timm's final LayerNorm and ImageNet classifier: DPT reads block outputs before that norm.
_MIDAS_UNUSED = re.compile(r"^pretrained\.model\.(norm|head)\.")

# The same weights converted to transformers' DPTForDepthEstimation (``Intel/dpt-hybrid-midas``),
# whose fusion stages run deepest first and whose attention has separate q, k, v projections.
_HF_BIT = r"^dpt\.embeddings\.backbone\.bit\."
_HF_LAYER = r"^dpt\.encoder\.layer\.(\d+)\."
_HF_RULES: tuple[Rule, ...] = (
    (_HF_BIT + r"embedder\.convolution\.", "resnet.stem.conv."),
    (_HF_BIT + r"embedder\.norm\.", "resnet.stem.norm."),
    (_HF_BIT + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.downsample\.", r"resnet.stages.\1.\2.downsample."),
    (_HF_BIT + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(conv|norm)([123])\.", r"resnet.stages.\1.\2.unit\4.\3."),
    (r"^dpt\.embeddings\.projection\.", "patch_proj."),
    (r"^dpt\.embeddings\.cls_token$", "cls_token"),
    (r"^dpt\.embeddings\.position_embeddings$", "pos_embed"),
    (_HF_LAYER + r"attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (_HF_LAYER + r"intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (_HF_LAYER + r"output\.dense\.", r"blocks.\1.mlp.fc2."),
    (_HF_LAYER + r"layernorm_before\.", r"blocks.\1.norm1."),
    (_HF_LAYER + r"layernorm_after\.", r"blocks.\1.norm2."),
    (r"^neck\.reassemble_stage\.readout_projects\.([23])\.0\.", lambda m: f"reassemble.{int(m[1]) - 2}.readout."),
    (r"^neck\.reassemble_stage\.layers\.([23])\.projection\.", lambda m: f"reassemble.{int(m[1]) - 2}.conv."),
    (r"^neck\.reassemble_stage\.layers\.3\.resize\.", "reassemble.1.down."),
    (r"^neck\.convs\.([0-3])\.", r"layer_rn.\1."),
    (
        r"^neck\.fusion_stage\.layers\.([0-3])\.(\w+)\.(?:convolution([12])\.)?",
        lambda m: f"fusion.{3 - int(m[1])}.{_FUSION_PARTS.get(m[2], m[2])}." + (f"conv{m[3]}." if m[3] else ""),
    ),
    (r"^head\.head\.", "head."),
)
_HF_UNUSED = re.compile(r"^dpt\.layernorm\.")
_HF_QKV = re.compile(_HF_LAYER + r"attention\.attention\.(query|key|value)\.(weight|bias)$")


def remap_midas_checkpoint(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """DPT-Hybrid MiDaS weights in :class:`DPTHybrid`'s key names, from either published layout:
    the MiDaS ``dpt_hybrid-midas-501f0c75.pt`` (or a training snapshot holding it under ``model``),
    or its transformers conversion ``Intel/dpt-hybrid-midas`` (``model.safetensors``)."""
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        checkpoint = checkpoint["model"]  # type: ignore[assignment]
    if "dpt.embeddings.cls_token" not in checkpoint:
        return {rename_key(k, _MIDAS_RULES): v for k, v in checkpoint.items() if not _MIDAS_UNUSED.match(k)}  # type: ignore[misc]
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in checkpoint.items():
        if _HF_UNUSED.match(key):
            continue
        if match := _HF_QKV.match(key):
            qkv.setdefault((match[1], match[3]), {})[match[2]] = value  # type: ignore[assignment]
            continue
        out[rename_key(key, _HF_RULES)] = value  # type: ignore[assignment]
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            # Incomplete: keep the originals so that the strict load names what is missing.
            out.update({f"dpt.encoder.layer.{layer}.attention.attention.{p}.{kind}": t for p, t in parts.items()})
            continue
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out
