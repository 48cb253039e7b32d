"""ZoeDepth (``ZoeD_M12_N``) as transformers' ``ZoeDepthForDepthEstimation``: its configuration and
the pure remap of the v1.1 checkpoint onto it.

Bhat et al., "ZoeDepth: Zero-shot Transfer by Combining Relative and Metric Depth" (2023): a MiDaS
v3.1 DPT with a BEiT-L/16 (384) encoder, whose decoder features feed a metric bins head (seed bins,
four attractor layers of 16, 8, 4, 1 "inv" attractors, a log-binomial output over 64 softplus bin
centres). ControlNet v1.1's ``annotator/zoe`` builds it from ``config_zoedepth.json`` with the
``infer`` settings and loads ``ZoeD_M12_N.pt`` strictly from its ``['model']`` entry.

The checkpoint's timm/MiDaS names map onto transformers' one to one, except: DINO-style fused
``qkv`` weights are split into query, key and value (BEiT has a query and a value bias, no key bias);
the constants the model recomputes (each block's ``relative_position_index`` for the 24x24 window,
the log-binomial's ``k_idx`` and ``K_minus_1``) and timm's unused classifier parts (``fc_norm``,
``head``) are dropped. timm's BEiT LayerNorms use eps 1e-6, which the weights were trained with;
transformers' BEiT default (and the Hub conversions' configs) say 1e-12, so 1e-6 is set for both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from annotators.nets.keys import Rule, rename_key

if TYPE_CHECKING:
    import torch
    from transformers import ZoeDepthConfig

__all__ = ["LAYER_NORM_EPS", "build_zoedepth", "remap_zoedepth_checkpoint", "zoedepth_config"]

LAYER_NORM_EPS = 1e-6  # timm's BEiT


def zoedepth_config() -> ZoeDepthConfig:
    """The transformers configuration of v1.1's ZoeDepth (``ZoeD_M12_N``, the NYU metric head)."""
    from transformers import BeitConfig, ZoeDepthConfig

    backbone = BeitConfig(
        image_size=384,
        patch_size=16,
        num_hidden_layers=24,
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        hidden_act="gelu",
        layer_norm_eps=LAYER_NORM_EPS,
        use_absolute_position_embeddings=False,
        use_relative_position_bias=True,
        use_mask_token=False,
        reshape_hidden_states=False,
        out_features=["stage6", "stage12", "stage18", "stage24"],  # MiDaS hooks blocks 5, 11, 17, 23
    )
    return ZoeDepthConfig(
        backbone_config=backbone,
        readout_type="project",
        neck_hidden_sizes=[256, 512, 1024, 1024],
        fusion_hidden_size=256,
        bottleneck_features=256,
        num_relative_features=32,
        num_attractors=[16, 8, 4, 1],
        bin_embedding_dim=128,
        attractor_alpha=1000,
        attractor_gamma=2,
        attractor_kind="mean",
        min_temp=0.0212,
        max_temp=50.0,
        bin_centers_type="softplus",
        bin_configurations=[{"name": "nyu", "n_bins": 64, "min_depth": 1e-3, "max_depth": 10.0}],
    )


def build_zoedepth() -> torch.nn.Module:
    """v1.1's ZoeDepth, parameters uninitialised (every one is then set by a strict load)."""
    from transformers import ZoeDepthForDepthEstimation
    from transformers.initialization import no_init_weights

    # Not on the meta device: the log-binomial's constant buffers are not in the state dict.
    with no_init_weights():
        return ZoeDepthForDepthEstimation(zoedepth_config())


_VIT = r"^core\.core\.pretrained\.model\."
_BLOCK = _VIT + r"blocks\.(\d+)\."
_RULES: tuple[Rule, ...] = (
    (_VIT + r"cls_token$", "backbone.beit.embeddings.cls_token"),
    (_VIT + r"patch_embed\.proj\.", "backbone.beit.embeddings.patch_embeddings.projection."),
    (_BLOCK + r"gamma_([12])$", r"backbone.beit.layers.\1.lambda_\2"),
    (_BLOCK + r"norm1\.", r"backbone.beit.layers.\1.layernorm_before."),
    (_BLOCK + r"norm2\.", r"backbone.beit.layers.\1.layernorm_after."),
    (_BLOCK + r"attn\.q_bias$", r"backbone.beit.layers.\1.attention.q_proj.bias"),
    (_BLOCK + r"attn\.v_bias$", r"backbone.beit.layers.\1.attention.v_proj.bias"),
    (_BLOCK + r"attn\.proj\.", r"backbone.beit.layers.\1.attention.o_proj."),
    (_BLOCK + r"attn\.relative_position_bias_table$", r"backbone.beit.layers.\1.relative_position_bias.relative_position_bias_table"),
    (_BLOCK + r"mlp\.(fc[12])\.", r"backbone.beit.layers.\1.mlp.\2."),
    (r"^core\.core\.pretrained\.act_postprocess([1-4])\.0\.project\.0\.", lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0."),
    (r"^core\.core\.pretrained\.act_postprocess([1-4])\.3\.", lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection."),
    (r"^core\.core\.pretrained\.act_postprocess([124])\.4\.", lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.resize."),
    (r"^core\.core\.scratch\.layer([1-4])_rn\.", lambda m: f"neck.convs.{int(m[1]) - 1}."),
    (r"^core\.core\.scratch\.refinenet([1-4])\.out_conv\.", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection."),
    (
        r"^core\.core\.scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.",
        lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}.",
    ),
    (r"^core\.core\.scratch\.output_conv\.([024])\.", lambda m: f"relative_head.conv{int(m[1]) // 2 + 1}."),
    (r"^conv2\.", "metric_head.conv2."),
    (r"^(seed_bin_regressor|seed_projector|projectors\.\d+|attractors\.\d+)\._net\.([02])\.", lambda m: f"metric_head.{m[1]}.conv{int(m[2]) // 2 + 1}."),
    (r"^conditional_log_binomial\.mlp\.", "metric_head.conditional_log_binomial.mlp."),
)
# Constants the model recomputes, and timm's classification parts that DPT never reads.
_DROPPED = re.compile(
    _BLOCK + r"attn\.relative_position_index$|" + _VIT + r"(fc_norm|head)\.|"
    r"^conditional_log_binomial\.log_binomial_transform\.(k_idx|K_minus_1)$"
)
_QKV = re.compile(_BLOCK + r"attn\.qkv\.weight$")


def remap_zoedepth_checkpoint(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """v1.1's ``ZoeD_M12_N.pt`` (its ``['model']`` entry, or that state dict itself) in transformers'
    ``ZoeDepthForDepthEstimation`` names; see the module docstring for what is split and dropped."""
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        checkpoint = checkpoint["model"]  # type: ignore[assignment]
    out: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if _DROPPED.match(key):
            continue
        if match := _QKV.match(key):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):  # type: ignore[attr-defined]
                out[f"backbone.beit.layers.{match[1]}.attention.{name}.weight"] = part
            continue
        out[rename_key(key, _RULES)] = value  # type: ignore[assignment]
    return out
