"""ControlNet weights as one ``.safetensors`` file, in the layouts A1111 and ComfyUI load.

Two layouts exist, and both tools read both:

- ``original``: the original ControlNet code (lllyasviel/ControlNet, ``cldm``) stores the control
  branch as a copy of the LDM UNet encoder (``input_blocks``, ``middle_block``, ``time_embed``, and
  for SDXL ``label_emb``) plus the condition encoder ``input_hint_block`` and the zero convolutions
  ``zero_convs`` / ``middle_block_out``, under the ``control_model.`` prefix. The SD 1.x/2.x
  ControlNets (``control_v11p_sd15_canny`` ...) are distributed this way.
- ``diffusers``: the state dict of diffusers' ``ControlNetModel`` as it is (``down_blocks.*``,
  ``controlnet_cond_embedding.*``, ``controlnet_down_blocks.*``, ``add_embedding.*``), the
  ``diffusion_pytorch_model.safetensors`` of a diffusers folder. SDXL ControlNets are distributed
  this way (diffusers/controlnet-canny-sdxl-1.0 and its successors); A1111's sd-webui-controlnet and
  ComfyUI recognise it by its ``controlnet_cond_embedding.conv_in.weight`` key and rename it
  themselves, and diffusers' single-file loader recognises an SDXL ControlNet by its
  ``add_embedding.linear_1.weight`` key.

``cn-train export`` writes ``original`` for SD 1.x/2.x ControlNets and ``diffusers`` for SDXL ones
unless told otherwise. The renamings here are pure (no tensor is reshaped), so round trips are exact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

PREFIX = "control_model."
LAYOUTS = ("original", "diffusers")
#: present in every diffusers-layout ControlNet file, absent from original-layout ones
DIFFUSERS_KEY = "controlnet_cond_embedding.conv_in.weight"

# Sub-module names inside one residual block: diffusers name <-> LDM ``ResBlock`` name.
_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_PARTS_BACK = {ldm: hf for hf, ldm in _RESNET_PARTS.items()}

_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's pooled-text and size embedding
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
    "controlnet_mid_block": "middle_block_out.0",
}


class LayoutError(ValueError):
    """A state dict holds a key that the layout mapping does not know."""


def _resnet_part(rest: str, table: dict[str, str], key: str) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise LayoutError(f"unknown residual-block tensor {key!r}")


def _split_tensor_name(key: str) -> tuple[str, str]:
    """('module.path', 'weight') from 'module.path.weight'."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _layers_per_block(keys: list[str]) -> int:
    resnets = [int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.\d+\.resnets\.(\d+)\.", k))]
    if not resnets:
        raise LayoutError("state dict has no down_blocks.*.resnets.* tensors: not a ControlNet")
    return max(resnets) + 1


def _hint_block_count(keys: list[str]) -> int:
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))}
    return len(blocks)


def diffusers_to_original(state_dict: dict[str, torch.Tensor], prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``ControlNetModel`` state dict to the original ``control_model.*`` keys."""
    keys = list(state_dict)
    per_block = _layers_per_block(keys) + 1  # resnets plus one slot for the downsampler
    hint_blocks = _hint_block_count(keys)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        module, leaf = _split_tensor_name(key)
        if module in _FIXED:
            new = _FIXED[module]
        elif module == "controlnet_cond_embedding.conv_out":
            new = f"input_hint_block.{2 + 2 * hint_blocks}"
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)", module):
            new = f"input_hint_block.{2 + 2 * int(m.group(1))}"
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)", module):
            new = f"zero_convs.{m.group(1)}.0"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
            new = f"input_blocks.{(int(m.group(1)) + 1) * per_block}.0.op"
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.(.*))?$", module):
            block, kind, layer, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4) or ""
            index = 1 + block * per_block + layer
            if kind == "resnets":
                new = f"input_blocks.{index}.0.{_resnet_part(rest, _RESNET_PARTS, key)}"
            else:
                new = f"input_blocks.{index}.1" + (f".{rest}" if rest else "")
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$", module):
            kind, layer, rest = m.group(1), int(m.group(2)), m.group(3) or ""
            # LDM middle_block is [resnet, attention, resnet]: resnet k -> 2k, attention k -> 2k+1.
            if kind == "resnets":
                new = f"middle_block.{2 * layer}.{_resnet_part(rest, _RESNET_PARTS, key)}"
            else:
                new = f"middle_block.{2 * layer + 1}" + (f".{rest}" if rest else "")
        else:
            raise LayoutError(f"no original-layout name for diffusers tensor {key!r}")
        out[f"{prefix}{new}.{leaf}"] = tensor
    return out


def _original_layers_per_block(keys: list[str]) -> int:
    """Residual blocks per level, from the index of the first downsampler (``input_blocks.N.0.op``)."""
    ops = sorted({int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))})
    if ops:
        return ops[0] - 1
    # A single-level UNet has no downsampler: every input block after conv_in is a residual block.
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    return max(blocks)


def original_to_diffusers(state_dict: dict[str, torch.Tensor], prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """Rename an original-layout ControlNet state dict (with or without ``prefix``) to diffusers keys."""
    stripped = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    keys = list(stripped)
    per_block = _original_layers_per_block(keys) + 1
    hint_indices = sorted({int(m.group(1)) for k in keys if (m := re.match(r"input_hint_block\.(\d+)\.", k))})
    hint_out = hint_indices[-1] if hint_indices else None
    fixed_back = {ldm: hf for hf, ldm in _FIXED.items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in stripped.items():
        module, leaf = _split_tensor_name(key)
        if module in fixed_back:
            new = fixed_back[module]
        elif m := re.fullmatch(r"input_hint_block\.(\d+)", module):
            index = int(m.group(1))
            new = (
                "controlnet_cond_embedding.conv_out"
                if index == hint_out
                else f"controlnet_cond_embedding.blocks.{(index - 2) // 2}"
            )
        elif m := re.fullmatch(r"zero_convs\.(\d+)\.0", module):
            new = f"controlnet_down_blocks.{m.group(1)}"
        elif m := re.fullmatch(r"input_blocks\.(\d+)\.0\.op", module):
            new = f"down_blocks.{int(m.group(1)) // per_block - 1}.downsamplers.0.conv"
        elif m := re.match(r"input_blocks\.(\d+)\.([01])(?:\.(.*))?$", module):
            index, part, rest = int(m.group(1)), m.group(2), m.group(3) or ""
            block, layer = divmod(index - 1, per_block)
            if part == "0":
                new = f"down_blocks.{block}.resnets.{layer}.{_resnet_part(rest, _RESNET_PARTS_BACK, key)}"
            else:
                new = f"down_blocks.{block}.attentions.{layer}" + (f".{rest}" if rest else "")
        elif m := re.match(r"middle_block\.(\d+)(?:\.(.*))?$", module):
            index, rest = int(m.group(1)), m.group(2) or ""
            layer, is_attention = divmod(index, 2)
            if is_attention:
                new = f"mid_block.attentions.{layer}" + (f".{rest}" if rest else "")
            else:
                new = f"mid_block.resnets.{layer}.{_resnet_part(rest, _RESNET_PARTS_BACK, key)}"
        else:
            raise LayoutError(f"no diffusers name for original-layout tensor {key!r}")
        out[f"{new}.{leaf}"] = tensor
    return out


def default_layout(config: dict[str, Any]) -> str:
    """``diffusers`` for an SDXL ControlNet (its "text_time" added embedding), else ``original``."""
    return "diffusers" if config.get("addition_embed_type") == "text_time" else "original"


def export_controlnet(
    controlnet: str | Path, output: str | Path, dtype: torch.dtype | None = None, layout: str | None = None
) -> Path:
    """Write the diffusers ControlNet folder ``controlnet`` as one ``.safetensors`` file in ``layout``
    (default: :func:`default_layout`). The file carries the diffusers config in its metadata, so that
    :func:`load_controlnet_file` rebuilds the model offline."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    model = ControlNetModel.from_pretrained(controlnet)
    layout = layout or default_layout(dict(model.config))
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")
    state = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "diffusers_config": json.dumps(dict(model.config), default=str)}
    save_file(diffusers_to_original(state) if layout == "original" else state, str(output), metadata=metadata)
    return output


def load_original(path: str | Path) -> dict[str, torch.Tensor]:
    """An original-layout ``.safetensors`` ControlNet file, renamed to diffusers keys."""
    from safetensors.torch import load_file

    return original_to_diffusers(load_file(str(path)))


def load_controlnet_file(path: str | Path, model_class: type | None = None) -> Any:
    """A ControlNet model from one ``.safetensors`` file in either layout.

    Files written by :func:`export_controlnet` carry their diffusers config and load offline; others
    go through diffusers' single-file loader, which infers the config (and may need the Hub).
    """
    from diffusers import ControlNetModel
    from safetensors import safe_open

    model_class = model_class or ControlNetModel
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    if "diffusers_config" not in metadata:
        return model_class.from_single_file(str(path))
    config = {k: v for k, v in json.loads(metadata["diffusers_config"]).items() if not k.startswith("_")}
    model = model_class.from_config(config)
    model.load_state_dict(state if DIFFUSERS_KEY in state else original_to_diffusers(state), strict=True)
    return model
