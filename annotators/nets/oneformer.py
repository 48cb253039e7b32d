"""OneFormer (Jain et al., "OneFormer: One Transformer to Rule Universal Image Segmentation", CVPR
2023) with a Swin-L backbone, run on transformers' ``OneFormerForUniversalSegmentation``.

The published checkpoints (``250_16_swin_l_oneformer_ade20k_160k.pth``,
``150_16_swin_l_oneformer_coco_100ep.pth``) are detectron2 state dicts; :func:`remap_oneformer_checkpoint`
renames them onto transformers' ``OneFormerModel`` (the network without the training loss). The
correspondence is the one transformers' conversion script uses, re-derived here against the module
names of the installed transformers:

* Swin: ``backbone.layers.i.blocks.j.{norm1,norm2,attn.proj,attn.relative_position_bias_table}`` are
  ``layernorm_before``, ``layernorm_after``, ``attention.o_proj`` and
  ``attention.relative_position_bias.relative_position_bias_table``; the fused ``attn.qkv`` is split
  in three (query, key, value rows in that order); ``backbone.norm{i}`` are the per-stage output
  norms ``hidden_states_norms.stage{i+1}``. The ``relative_position_index`` buffers are not loaded:
  transformers computes the same index itself.
* Pixel decoder: ``transformer.encoder.layers.k.{linear1,linear2,norm1,norm2}`` are
  ``encoder.layers.k.{fc1,fc2,self_attn_layer_norm,final_layer_norm}``; ``input_proj`` is
  ``input_projections``; ``mask_features`` is ``mask_projection``; the FPN convs (``adapter_1``,
  ``layer_1``) keep their conv at index 0 and their GroupNorm at index 1.
* Transformer decoder: ``query_embed`` is ``queries_embedder``; ``class_input_proj`` is
  ``query_input_projection``; ``class_transformer`` is ``query_transformer``; the masked-attention
  layers ``transformer_{cross_attention,self_attention,ffn}_layers.i`` become ``layers.i.{cross_attn,
  self_attn,ffn}``, and the self-attention's packed ``in_proj`` is split into ``q/k/v_proj``.
* ``task_mlp.layers.i`` is ``task_encoder.task_mlp.layers.i.0``.

Left out on purpose: the text encoder of training (``text_encoder.*``, ``text_projector.*``,
``prompt_ctx.*``), which semantic inference never runs, is dropped by the remap, so the strict load
checks every weight the network uses and nothing else. transformers' Swin also owns a final
LayerNorm (``swin.layernorm``) whose output the backbone discards; detectron2 has none, so the remap
fills it with LayerNorm's identity values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import OneFormerConfig

__all__ = ["TRAINING_ONLY_PREFIXES", "oneformer_swin_large_config", "remap_oneformer_checkpoint"]

#: detectron2 keys of the training-time text branch, which semantic inference does not use
TRAINING_ONLY_PREFIXES = ("text_encoder.", "text_projector.", "prompt_ctx.")

_SWIN = "pixel_level_module.encoder.swin."
_PIXEL_DECODER = "pixel_level_module.decoder."
_DECODER = "transformer_module.decoder."

#: (detectron2 pattern, transformers replacement), first match wins; keys matching none are kept,
#: so that a strict load names them.
_RENAMES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^backbone\.patch_embed\.proj\.", _SWIN + "embeddings.patch_embeddings.projection."),
        (r"^backbone\.patch_embed\.norm\.", _SWIN + "embeddings.norm."),
        (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.norm1\.", _SWIN + r"encoder.layers.\1.blocks.\2.layernorm_before."),
        (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.norm2\.", _SWIN + r"encoder.layers.\1.blocks.\2.layernorm_after."),
        (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.", _SWIN + r"encoder.layers.\1.blocks.\2.attention.o_proj."),
        (
            r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$",
            _SWIN + r"encoder.layers.\1.blocks.\2.attention.relative_position_bias.relative_position_bias_table",
        ),
        (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.", _SWIN + r"encoder.layers.\1.blocks.\2.mlp."),
        (r"^backbone\.layers\.(\d+)\.downsample\.", _SWIN + r"encoder.layers.\1.downsample."),
        # transformers numbers the stage output norms from 1
        (r"^backbone\.norm(\d)\.", lambda m: f"pixel_level_module.encoder.hidden_states_norms.stage{int(m.group(1)) + 1}."),
        (r"^sem_seg_head\.pixel_decoder\.input_proj\.", _PIXEL_DECODER + "input_projections."),
        (r"^sem_seg_head\.pixel_decoder\.transformer\.level_embed$", _PIXEL_DECODER + "level_embed"),
        (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear1\.", _PIXEL_DECODER + r"encoder.layers.\1.fc1."),
        (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear2\.", _PIXEL_DECODER + r"encoder.layers.\1.fc2."),
        (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm1\.", _PIXEL_DECODER + r"encoder.layers.\1.self_attn_layer_norm."),
        (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm2\.", _PIXEL_DECODER + r"encoder.layers.\1.final_layer_norm."),
        (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.self_attn\.", _PIXEL_DECODER + r"encoder.layers.\1.self_attn."),
        (r"^sem_seg_head\.pixel_decoder\.mask_features\.", _PIXEL_DECODER + "mask_projection."),
        (r"^sem_seg_head\.pixel_decoder\.(adapter_\d+|layer_\d+)\.weight$", _PIXEL_DECODER + r"\1.0.weight"),
        (r"^sem_seg_head\.pixel_decoder\.(adapter_\d+|layer_\d+)\.norm\.", _PIXEL_DECODER + r"\1.1."),
        (r"^sem_seg_head\.predictor\.query_embed\.", "transformer_module.queries_embedder."),
        (r"^sem_seg_head\.predictor\.level_embed\.", "transformer_module.level_embed."),
        (r"^sem_seg_head\.predictor\.decoder_norm\.", _DECODER + "decoder_norm."),
        (r"^sem_seg_head\.predictor\.class_input_proj\.", _DECODER + "query_input_projection."),
        (r"^sem_seg_head\.predictor\.class_embed\.", _DECODER + "class_embed."),
        (r"^sem_seg_head\.predictor\.mask_embed\.layers\.(\d+)\.", _DECODER + r"mask_embed.layers.\1.0."),
        (r"^sem_seg_head\.predictor\.class_transformer\.decoder\.", _DECODER + "query_transformer.decoder."),
        (r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.", _DECODER + r"layers.\1.cross_attn."),
        (r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.", _DECODER + r"layers.\1.self_attn.self_attn.out_proj."),
        (r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.norm\.", _DECODER + r"layers.\1.self_attn.norm."),
        (r"^sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.", _DECODER + r"layers.\1.ffn."),
        (r"^task_mlp\.layers\.(\d+)\.", r"task_encoder.task_mlp.layers.\1.0."),
    )
)

#: fused projections split row-wise into query, key and value: detectron2 key (without the
#: ``weight``/``bias`` suffix) -> the transformers prefix the three parts go under
_FUSED_QKV: tuple[tuple[re.Pattern[str], str, tuple[str, str, str]], ...] = (
    (re.compile(r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"), _SWIN + r"encoder.layers.\1.blocks.\2.attention.", ("q_proj", "k_proj", "v_proj")),
    (
        re.compile(r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$"),
        _DECODER + r"layers.\1.self_attn.self_attn.",
        ("q_proj", "k_proj", "v_proj"),
    ),
)

_RELATIVE_POSITION_INDEX = re.compile(r"^backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$")


def remap_oneformer_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A detectron2 OneFormer checkpoint (``{'model': state_dict}`` or the bare state dict, keys
    possibly prefixed ``module.``) in the key names of transformers' ``OneFormerModel``.

    Drops the training-only text branch (:data:`TRAINING_ONLY_PREFIXES`) and the Swin
    ``relative_position_index`` buffers, splits the fused q/k/v projections, and adds identity
    values for ``swin.layernorm`` (unused by the backbone's outputs). Unknown keys are kept, so that
    a strict load reports them.
    """
    import torch

    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        checkpoint = checkpoint["model"]
    out: dict[str, torch.Tensor] = {}
    last_stage_width = None
    for key, value in checkpoint.items():
        key = key.removeprefix("module.")
        if key.startswith(TRAINING_ONLY_PREFIXES) or _RELATIVE_POSITION_INDEX.match(key):
            continue
        fused = next(((m, prefix, names) for pattern, prefix, names in _FUSED_QKV if (m := pattern.match(key))), None)
        if fused is not None:
            match, prefix, names = fused
            suffix = match.group(match.re.groups)
            base = match.expand(prefix)
            for name, part in zip(names, value.chunk(3, dim=0), strict=True):
                out[f"{base}{name}.{suffix}"] = part
            continue
        if key == "backbone.norm3.weight":
            last_stage_width = value.shape[0]
        for pattern, replacement in _RENAMES:
            if pattern.match(key):
                key = pattern.sub(replacement, key, count=1)
                break
        out[key] = value
    if last_stage_width is not None:
        out[_SWIN + "layernorm.weight"] = torch.ones(last_stage_width)
        out[_SWIN + "layernorm.bias"] = torch.zeros(last_stage_width)
    return out


def oneformer_swin_large_config(num_queries: int, classes: tuple[str, ...]) -> OneFormerConfig:
    """The detectron2 configs' OneFormer Swin-L (``oneformer_swin_large_IN21k_384_bs16_*``): Swin-L
    with 12-token windows, a 6-layer deformable pixel decoder, a 10-prediction masked-attention
    decoder with a 2-layer query transformer and a task token, inference only."""
    from transformers import OneFormerConfig, SwinConfig

    backbone = SwinConfig(
        embed_dim=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=12,
        image_size=384,
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return OneFormerConfig(
        backbone_config=backbone,
        num_queries=num_queries,
        id2label=dict(enumerate(classes)),
        label2id={name: index for index, name in enumerate(classes)},
        is_training=False,
        output_auxiliary_logits=False,
    )
