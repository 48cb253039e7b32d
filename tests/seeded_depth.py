"""Seeded stand-ins for the depth annotators' weights that no parity case covers.

* The authors' Depth Anything checkpoints of every size (V1 and V2 share the layout): the key names
  and shapes of ``DepthAnythingV2``/``DPT_DINOv2``'s ``state_dict()`` written out per size by
  :func:`depth_anything_layout` (checked against the ViT-L parity manifest in the tests), filled
  with the parity README's seeded rule.
* v1.1's ``ZoeD_M12_N.pt``: the layout of ``tests/data/zoe_v11/manifest.json`` (dumped from the
  upstream model), seeded by the same rule, the constant buffers at the values the model computes.
* Transformers model folders (``config.json`` + ``model.safetensors``) of *tiny* configurations
  under the published model ids, so that the registry-wide tests run in seconds: they stand in for
  the layout, not the size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

SEED = 0
ZOE_FIXTURE = Path(__file__).resolve().parent / "data" / "zoe_v11"


def depth_anything_layout(encoder: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(key, shape)`` of the authors' Depth Anything checkpoint of ``encoder``, in model order."""
    from annotators.nets.depth_anything import ENCODERS

    width, _, depth, channels, fusion = ENCODERS[encoder]
    vit: list[tuple[str, tuple[int, ...]]] = [
        ("cls_token", (1, 1, width)),
        ("pos_embed", (1, 1370, width)),
        ("mask_token", (1, width)),
        ("patch_embed.proj.weight", (width, 3, 14, 14)),
        ("patch_embed.proj.bias", (width,)),
    ]
    for i in range(depth):
        block = f"blocks.{i}."
        vit += [
            (block + "norm1.weight", (width,)),
            (block + "norm1.bias", (width,)),
            (block + "attn.qkv.weight", (3 * width, width)),
            (block + "attn.qkv.bias", (3 * width,)),
            (block + "attn.proj.weight", (width, width)),
            (block + "attn.proj.bias", (width,)),
            (block + "ls1.gamma", (width,)),
            (block + "norm2.weight", (width,)),
            (block + "norm2.bias", (width,)),
            (block + "mlp.fc1.weight", (4 * width, width)),
            (block + "mlp.fc1.bias", (4 * width,)),
            (block + "mlp.fc2.weight", (width, 4 * width)),
            (block + "mlp.fc2.bias", (width,)),
            (block + "ls2.gamma", (width,)),
        ]
    vit += [("norm.weight", (width,)), ("norm.bias", (width,))]
    head: list[tuple[str, tuple[int, ...]]] = []
    for i, c in enumerate(channels):
        head += [(f"projects.{i}.weight", (c, width, 1, 1)), (f"projects.{i}.bias", (c,))]
    for i, kernel in ((0, 4), (1, 2), (3, 3)):  # ConvTranspose x4, x2, (identity), Conv stride 2
        head += [(f"resize_layers.{i}.weight", (channels[i], channels[i], kernel, kernel)), (f"resize_layers.{i}.bias", (channels[i],))]
    head += [(f"scratch.layer{i + 1}_rn.weight", (fusion, c, 3, 3)) for i, c in enumerate(channels)]
    for n in range(1, 5):
        unit = f"scratch.refinenet{n}."
        head += [(unit + "out_conv.weight", (fusion, fusion, 1, 1)), (unit + "out_conv.bias", (fusion,))]
        for rcu in (1, 2):
            for conv in (1, 2):
                name = f"{unit}resConfUnit{rcu}.conv{conv}."
                head += [(name + "weight", (fusion, fusion, 3, 3)), (name + "bias", (fusion,))]
    head += [
        ("scratch.output_conv1.weight", (fusion // 2, fusion, 3, 3)),
        ("scratch.output_conv1.bias", (fusion // 2,)),
        ("scratch.output_conv2.0.weight", (32, fusion // 2, 3, 3)),
        ("scratch.output_conv2.0.bias", (32,)),
        ("scratch.output_conv2.2.weight", (1, 32, 1, 1)),
        ("scratch.output_conv2.2.bias", (1,)),
    ]
    return [("pretrained." + k, s) for k, s in vit] + [("depth_head." + k, s) for k, s in head]


def seeded_state(layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    """Torch tensors drawn with the parity README's rule (seed 0) in ``layout`` order."""
    import numpy as np
    import torch

    from tests.parity import seeded_arrays

    arrays = seeded_arrays({"seed": SEED, "keys": [[k, list(s), "float32"] for k, s in layout]})
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def save_state(state: dict[str, Any], path: Path) -> None:
    """A flat state dict as safetensors or a torch pickle, by the file's suffix."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


def depth_anything_writer(encoder: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        save_state(seeded_state(depth_anything_layout(encoder)), path)

    return write


def seed_module(model: Any) -> Any:
    """Every float parameter and buffer of ``model`` set by the README's rule, in its own order;
    other buffers keep their values (as the parity manifests' ``non_float_buffers``)."""
    state = model.state_dict()
    floats = [(k, tuple(v.shape)) for k, v in state.items() if v.is_floating_point()]
    model.load_state_dict({**state, **seeded_state(floats)})
    return model


def tiny_depth_anything_folder(folder: Path) -> None:
    """A seeded ``DepthAnythingForDepthEstimation`` of a tiny configuration, saved as a model folder."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        image_size=518, patch_size=14, hidden_size=48, num_attention_heads=3, num_hidden_layers=4,
        out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=48, neck_hidden_sizes=[12, 24, 48, 48], fusion_hidden_size=8,
        head_hidden_size=4,
    )
    seed_module(DepthAnythingForDepthEstimation(config)).save_pretrained(folder)


def zoe_v11_manifest() -> dict[str, Any]:
    return json.loads((ZOE_FIXTURE / "manifest.json").read_text())


def zoe_v11_state() -> dict[str, Any]:
    """v1.1's ZoeDepth state dict (upstream names and order), seeded; constants as the model has them."""
    import torch
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    manifest = zoe_v11_manifest()
    constants = set(manifest["constants"])
    seeded = seeded_state([(k, tuple(s)) for k, s, _ in manifest["keys"] if k not in constants])
    fixed = {
        "relative_position_index": BeitRelativePositionBias.generate_relative_position_index((24, 24)),  # timm's, 24x24 window
        "k_idx": torch.arange(64).view(1, 64, 1, 1),
        "K_minus_1": torch.tensor([63.0]).view(1, 1, 1, 1),
    }
    return {k: seeded[k] if k not in constants else fixed[k.rsplit(".", 1)[1]] for k, _, _ in manifest["keys"]}


def write_zoe_v11(path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": zoe_v11_state()}, path)  # v1.1 loads ['model']


def tiny_zoedepth_folder(heads: int) -> Callable[[Path], None]:
    """A seeded ``ZoeDepthForDepthEstimation`` of a tiny configuration with 1 (NYU) or 2 (NYU and
    KITTI, routed by a patch transformer) metric heads, saved as a model folder."""

    def write(folder: Path) -> None:
        from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation

        backbone = BeitConfig(
            image_size=384, patch_size=16, num_hidden_layers=4, hidden_size=32, intermediate_size=64, num_attention_heads=2,
            use_relative_position_bias=True, reshape_hidden_states=False, out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        bins = [{"name": "nyu", "n_bins": 8, "min_depth": 1e-3, "max_depth": 10.0}, {"name": "kitti", "n_bins": 8, "min_depth": 1e-3, "max_depth": 80.0}]
        router = {"num_patch_transformer_layers": 4, "patch_transformer_hidden_size": 128, "patch_transformer_intermediate_size": 64, "patch_transformer_num_attention_heads": 2}
        config = ZoeDepthConfig(
            backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, bottleneck_features=16,
            num_relative_features=8, bin_embedding_dim=8, bin_configurations=bins[:heads], **(router if heads > 1 else {}),
        )
        seed_module(ZoeDepthForDepthEstimation(config)).save_pretrained(folder)

    return write


WRITERS: dict[str, Callable[[Path], None]] = {
    **{f"depth_anything_v2_{e}.pth": depth_anything_writer(e) for e in ("vits", "vitb")},
    **{f"depth_anything_{e}14.pth": depth_anything_writer(e) for e in ("vits", "vitb", "vitl")},
    "depth-anything/Depth-Anything-V2-Small-hf": tiny_depth_anything_folder,
    "LiheYoung/depth-anything-small-hf": tiny_depth_anything_folder,
    "ZoeD_M12_N.pt": write_zoe_v11,
    "Intel/zoedepth-nyu": tiny_zoedepth_folder(1),
    "Intel/zoedepth-nyu-kitti": tiny_zoedepth_folder(2),
}
