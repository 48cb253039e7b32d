"""Depth Anything V1/V2 as transformers' ``DepthAnythingForDepthEstimation``: the configurations
of the published sizes, the pure remap of the authors' checkpoints onto it, and the one place where
transformers computes differently from the authors' DINOv2.

Yang et al., "Depth Anything" (CVPR 2024) and "Depth Anything V2" (NeurIPS 2024): a DINOv2 ViT/14
encoder (Oquab et al. 2023) whose normalised outputs at four blocks feed a DPT head (Ranftl et al.
2021). The two versions share the architecture; they differ only in which blocks feed the head
(V2: blocks 2, 5, 8, 11 of ViT-S/B and 4, 11, 17, 23 of ViT-L; V1: the last four). The authors'
``DPTHead`` and transformers' neck/head compute the same layers in the same order.

Positional embeddings: DINOv2 resamples its 37x37 grid to other patch grids with
``F.interpolate(bicubic, scale_factor=((h + 0.1) / 37, (w + 0.1) / 37))``, and PyTorch maps
coordinates with those given factors; transformers asks for the output size instead, which maps them
with ``37 / h``. The grids then differ slightly for every non-square input, so
:func:`use_reference_pos_encoding` puts DINOv2's rule on the model (square inputs of 518 px, where
both return the grid unchanged, are unaffected).
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from annotators.nets.keys import Rule, rename_key

if TYPE_CHECKING:
    import torch
    from transformers import DepthAnythingConfig

__all__ = [
    "ENCODERS",
    "PATCH",
    "Encoder",
    "Version",
    "build_depth_anything",
    "encoder_of",
    "model_config",
    "remap_depth_anything_checkpoint",
    "use_reference_pos_encoding",
]

Encoder = Literal["vits", "vitb", "vitl"]
Version = Literal[1, 2]
PATCH = 14
_IMAGE_SIZE = 518  # DINOv2's pretraining size: a 37x37 grid of positional embeddings


# encoder -> (width, heads, depth, DPT channels per level, DPT fusion width), as the authors' configs
ENCODERS: dict[str, tuple[int, int, int, tuple[int, int, int, int], int]] = {
    "vits": (384, 6, 12, (48, 96, 192, 384), 64),
    "vitb": (768, 12, 12, (96, 192, 384, 768), 128),
    "vitl": (1024, 16, 24, (256, 512, 1024, 1024), 256),
}
# 0-based blocks whose outputs V2 feeds the head (the authors' ``intermediate_layer_idx``)
_V2_BLOCKS = {"vits": (2, 5, 8, 11), "vitb": (2, 5, 8, 11), "vitl": (4, 11, 17, 23)}


def model_config(encoder: Encoder, version: Version) -> DepthAnythingConfig:
    """The transformers configuration of a published size and version."""
    from transformers import DepthAnythingConfig, Dinov2Config

    width, heads, depth, channels, fusion = ENCODERS[encoder]
    blocks = _V2_BLOCKS[encoder] if version == 2 else tuple(range(depth - 4, depth))
    backbone = Dinov2Config(
        image_size=_IMAGE_SIZE,
        patch_size=PATCH,
        hidden_size=width,
        num_attention_heads=heads,
        num_hidden_layers=depth,
        mlp_ratio=4,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        out_indices=[b + 1 for b in blocks],  # stage 0 is the embedding output
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=PATCH,
        reassemble_hidden_size=width,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(channels),
        fusion_hidden_size=fusion,
        head_hidden_size=32,
        depth_estimation_type="relative",
    )


def encoder_of(config: DepthAnythingConfig) -> str | None:
    """The published size a transformers configuration has, or None for any other."""
    width = config.backbone_config.hidden_size
    return next((name for name, spec in ENCODERS.items() if spec[0] == width), None)


def build_depth_anything(encoder: Encoder, version: Version) -> torch.nn.Module:
    """An uninitialised model of the given size (every parameter is then set by a strict load)."""
    import torch
    from transformers import DepthAnythingForDepthEstimation

    # Built on the meta device: random initialisation of ViT-L takes seconds, and is overwritten.
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(model_config(encoder, version))
    model = model.to_empty(device="cpu")
    return use_reference_pos_encoding(model)


def _dinov2_pos_encoding(self: torch.nn.Module, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2's ``interpolate_pos_encoding`` (with its 0.1 offset), for ``Dinov2Embeddings``."""
    import torch
    import torch.nn.functional as F

    position = self.position_embeddings
    grid = int(math.sqrt(position.shape[1] - 1))
    if embeddings.shape[1] - 1 == grid * grid and height == width:
        return position
    dim = position.shape[-1]
    patches = position[:, 1:].float().reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    scale = ((height // self.patch_size + 0.1) / grid, (width // self.patch_size + 0.1) / grid)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((position[:, :1].float(), patches), dim=1).to(position.dtype)


def use_reference_pos_encoding(model: torch.nn.Module) -> torch.nn.Module:
    """Make a ``DepthAnythingForDepthEstimation`` resample its positional embeddings as DINOv2 does
    (see the module docstring); returns the model."""
    embeddings = model.backbone.embeddings
    embeddings.interpolate_pos_encoding = types.MethodType(_dinov2_pos_encoding, embeddings)
    return model


# The authors' names (``DepthAnythingV2`` / ``DPT_DINOv2``: ``pretrained`` is the DINOv2 ViT,
# ``depth_head`` the DPT head) -> transformers'. Fusion blocks run deepest first in transformers.
_BLOCK = r"^pretrained\.blocks\.(\d+)\."
_RULES: tuple[Rule, ...] = (
    (r"^pretrained\.cls_token$", "backbone.embeddings.cls_token"),
    (r"^pretrained\.mask_token$", "backbone.embeddings.mask_token"),
    (r"^pretrained\.pos_embed$", "backbone.embeddings.position_embeddings"),
    (r"^pretrained\.patch_embed\.proj\.", "backbone.embeddings.patch_embeddings.projection."),
    (_BLOCK + r"attn\.proj\.", r"backbone.encoder.layer.\1.attention.o_proj."),
    (_BLOCK + r"ls([12])\.gamma$", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
    (_BLOCK + r"(norm[12]|mlp\.fc[12])\.", r"backbone.encoder.layer.\1.\2."),
    (r"^pretrained\.norm\.", "backbone.layernorm."),
    (r"^depth_head\.projects\.([0-3])\.", r"neck.reassemble_stage.layers.\1.projection."),
    (r"^depth_head\.resize_layers\.([013])\.", r"neck.reassemble_stage.layers.\1.resize."),
    (r"^depth_head\.scratch\.layer([1-4])_rn\.", lambda m: f"neck.convs.{int(m[1]) - 1}."),
    (r"^depth_head\.scratch\.refinenet([1-4])\.out_conv\.", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection."),
    (
        r"^depth_head\.scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.",
        lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}.",
    ),
    (r"^depth_head\.scratch\.output_conv1\.", "head.conv1."),
    (r"^depth_head\.scratch\.output_conv2\.0\.", "head.conv2."),
    (r"^depth_head\.scratch\.output_conv2\.2\.", "head.conv3."),
)
_QKV = re.compile(_BLOCK + r"attn\.qkv\.(weight|bias)$")


def remap_depth_anything_checkpoint(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The authors' Depth Anything V1 or V2 checkpoint (any size; ``.pth`` or MackinationsAi's
    ``.safetensors`` copy, same names) in transformers' ``DepthAnythingForDepthEstimation`` names.
    DINOv2's fused ``qkv`` projection is split into the query, key and value rows it stacks."""
    out: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if match := _QKV.match(key):
            query, key_, value_ = value.chunk(3, dim=0)  # type: ignore[attr-defined]
            prefix = f"backbone.encoder.layer.{match[1]}.attention"
            for name, part in (("q_proj", query), ("k_proj", key_), ("v_proj", value_)):
                out[f"{prefix}.{name}.{match[2]}"] = part
            continue
        out[rename_key(key, _RULES)] = value  # type: ignore[assignment]
    return out
