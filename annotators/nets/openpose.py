"""OpenPose body (COCO-18, 6 stages, PAF + heatmap branches) and hand (21 points, 6 stages) networks.

Architecture from CMU OpenPose (Cao et al., CVPR 2017; Simon et al., CVPR 2017) as converted to
PyTorch by pytorch-openpose and used by ControlNet (``annotator/openpose/model.py``). Layer names
follow the caffe models, grouped into named blocks (``model0``, ``model1_1``, ...). The published
checkpoints store the bare layer names (``conv1_1.weight``); :func:`remap_checkpoint` adds the block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["BodyPoseNet", "HandPoseNet", "remap_checkpoint"]

# A layer spec is (name, in, out, kernel) for a conv with "same" padding, or (name, None, None, None)
# for a 2x2 stride-2 max-pool.
LayerSpec = tuple[str, int | None, int | None, int | None]

_VGG_STEM: list[LayerSpec] = [
    ("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), ("pool1_stage1", None, None, None),
    ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), ("pool2_stage1", None, None, None),
    ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3),
    ("pool3_stage1", None, None, None), ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3),
]  # fmt: skip


def _refinement_stage(suffix: str, in_channels: int, out_channels: int) -> list[LayerSpec]:
    """Stages 2-6: five 7x7 convs, a 1x1 conv, and the 1x1 output conv."""
    layers: list[LayerSpec] = [(f"Mconv1_{suffix}", in_channels, 128, 7)]
    layers += [(f"Mconv{i}_{suffix}", 128, 128, 7) for i in range(2, 6)]
    return layers + [(f"Mconv6_{suffix}", 128, 128, 1), (f"Mconv7_{suffix}", 128, out_channels, 1)]


def _body_blocks() -> dict[str, list[LayerSpec]]:
    blocks: dict[str, list[LayerSpec]] = {
        "model0": _VGG_STEM + [("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, 128, 3)]
    }
    for branch, channels in ((1, 38), (2, 19)):
        blocks[f"model1_{branch}"] = [
            (f"conv5_1_CPM_L{branch}", 128, 128, 3), (f"conv5_2_CPM_L{branch}", 128, 128, 3),
            (f"conv5_3_CPM_L{branch}", 128, 128, 3), (f"conv5_4_CPM_L{branch}", 128, 512, 1),
            (f"conv5_5_CPM_L{branch}", 512, channels, 1),
        ]  # fmt: skip
        for stage in range(2, 7):
            blocks[f"model{stage}_{branch}"] = _refinement_stage(f"stage{stage}_L{branch}", 185, channels)
    return blocks


def _hand_blocks() -> dict[str, list[LayerSpec]]:
    stem = _VGG_STEM + [("conv4_3", 512, 512, 3), ("conv4_4", 512, 512, 3), ("conv5_1", 512, 512, 3),
                        ("conv5_2", 512, 512, 3), ("conv5_3_CPM", 512, 128, 3)]  # fmt: skip
    blocks = {"model1_0": stem, "model1_1": [("conv6_1_CPM", 128, 512, 1), ("conv6_2_CPM", 512, 22, 1)]}
    for stage in range(2, 7):
        blocks[f"model{stage}"] = _refinement_stage(f"stage{stage}", 150, 22)
    return blocks


# Output convs without a ReLU. The body list reproduces an upstream slip: it names
# Mconv7_stage6_L1 twice and never Mconv7_stage6_L2, so the final heatmaps pass through a ReLU.
_BODY_NO_RELU = frozenset(
    ["conv5_5_CPM_L1", "conv5_5_CPM_L2"]
    + [f"Mconv7_stage{s}_L{b}" for s in range(2, 6) for b in (1, 2)]
    + ["Mconv7_stage6_L1"]
)
_HAND_NO_RELU = frozenset(["conv6_2_CPM"] + [f"Mconv7_stage{s}" for s in range(2, 7)])


def _make_block(layers: list[LayerSpec], no_relu: frozenset[str]) -> nn.Sequential:
    modules: list[tuple[str, nn.Module]] = []
    for name, in_channels, out_channels, kernel in layers:
        if in_channels is None or out_channels is None or kernel is None:
            modules.append((name, nn.MaxPool2d(kernel_size=2, stride=2)))
            continue
        modules.append((name, nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)))
        if name not in no_relu:
            modules.append((f"relu_{name}", nn.ReLU()))
    return nn.Sequential(OrderedDict(modules))


class BodyPoseNet(nn.Module):
    """Returns ``(pafs [N,38,H/8,W/8], heatmaps [N,19,H/8,W/8])`` for input ``img/256 - 0.5`` (BGR)."""

    def __init__(self) -> None:
        super().__init__()
        for name, layers in _body_blocks().items():
            self.add_module(name, _make_block(layers, _BODY_NO_RELU))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model0(x)
        pafs, heatmaps = self.model1_1(features), self.model1_2(features)
        for stage in range(2, 7):
            stacked = torch.cat([pafs, heatmaps, features], 1)
            pafs = getattr(self, f"model{stage}_1")(stacked)
            heatmaps = getattr(self, f"model{stage}_2")(stacked)
        return pafs, heatmaps


class HandPoseNet(nn.Module):
    """Returns the 22 hand heatmaps (21 points + background) at 1/8 resolution."""

    def __init__(self) -> None:
        super().__init__()
        for name, layers in _hand_blocks().items():
            self.add_module(name, _make_block(layers, _HAND_NO_RELU))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model1_0(x)
        heatmaps = self.model1_1(features)
        for stage in range(2, 7):
            heatmaps = getattr(self, f"model{stage}")(torch.cat([heatmaps, features], 1))
        return heatmaps


def _layer_to_block(blocks: dict[str, list[LayerSpec]]) -> dict[str, str]:
    return {layer[0]: block for block, layers in blocks.items() for layer in layers}


_BLOCK_OF = {"body": _layer_to_block(_body_blocks()), "hand": _layer_to_block(_hand_blocks())}


def remap_checkpoint(checkpoint: Mapping[str, object], kind: str) -> dict[str, torch.Tensor]:
    """Published keys (``conv1_1.weight``) to module keys (``model0.conv1_1.weight``) for ``kind``
    ``"body"`` or ``"hand"``; layer names are unique across blocks, so the block follows from the name.
    Keys already carrying their block (a re-saved ``state_dict``) pass through."""
    layer_blocks = _BLOCK_OF[kind]
    blocks = set(layer_blocks.values())
    remapped: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        layer = key.split(".", 1)[0]
        if layer in blocks:
            remapped[key] = value  # type: ignore[assignment]
        else:
            remapped[f"{layer_blocks.get(layer, '?')}.{key}"] = value  # type: ignore[assignment]
    return remapped


def remap_body_checkpoint(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    return remap_checkpoint(checkpoint, "body")


def remap_hand_checkpoint(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    return remap_checkpoint(checkpoint, "hand")
