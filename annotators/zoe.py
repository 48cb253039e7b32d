"""ZoeDepth: ControlNet v1.1's ``depth_zoe`` condition (``ZoeDetector``), inverse depth.

Method: Bhat et al., "ZoeDepth: Zero-shot Transfer by Combining Relative and Metric Depth" (2023),
a MiDaS v3.1 BEiT-L DPT with a metric bins head, run as transformers' ``ZoeDepthForDepthEstimation``
(see :mod:`annotators.nets.zoedepth`). ``weights_format`` picks the weights:

  * ``original`` (default): ``ZoeD_M12_N.pt`` from ``lllyasviel/Annotators``, the file v1.1 loads
    (named as isl-org's ZoeD_M12_N release, the NYU Depth v2 model), remapped by a pure function and
    loaded strictly.
  * ``transformers``: a Hub conversion, ``transformers_model`` = ``Intel/zoedepth-nyu`` (converted
    from isl-org's ZoeD_N, i.e. ZoeD_M12_N) or ``Intel/zoedepth-nyu-kitti`` (ZoeD_M12_NK: a
    different training, on NYU and KITTI, with two metric heads and a router; its maps differ from
    v1.1's), loaded with ``AutoModelForDepthEstimation``.
Weights licence: MIT (isl-org/ZoeDepth; the Intel conversions likewise).

Semantics of v1.1's ``ZoeDetector`` (``model.infer`` with its defaults), on the image at its own size:
  * ``rgb / 255`` in float32;
  * reflect-pad by ``int(sqrt(side / 2) * 3)`` on each side, resize (bilinear, align_corners=True)
    with MiDaS' ``minimal`` keep-aspect rule towards 384x512 to multiples of 32, ``(x - 0.5) / 0.5``;
  * the network's metric depth, bicubic (align_corners=False) back to the padded size, the padding
    cropped off; the same for the horizontally flipped image, flipped back, and the two averaged;
  * ``d -= percentile(d, 2)``, ``d /= percentile(d, 85) - percentile(d, 2)`` (float32),
    ``(1 - d) * 255`` clipped and truncated to uint8: near is bright, the farthest 15% black.
Where the reference fails, this does not: the padding is capped below the side (reflection needs
it; the reference crashes for sides of 4 px or less), and a depth whose 2nd and 85th percentiles are
equal gives a black map, as the reference's 0/0 does after the uint8 cast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from annotators.base import param
from annotators.image import multiple_of_size
from annotators.neural import NeuralAnnotator, NeuralConfig
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch

__all__ = ["DepthZoe", "depth_to_uint8", "infer"]

CHECKPOINT = "ZoeD_M12_N.pt"
NET_SIZE = (384, 512)  # v1.1's ``img_size`` (height, width)
LICENSE = "MIT (isl-org/ZoeDepth)"
TRANSFORMERS_MODELS = ("Intel/zoedepth-nyu", "Intel/zoedepth-nyu-kitti")


def _padding(side: int) -> int:
    """v1.1's reflect padding of a side (``fh = fw = 3``), capped below the side as reflection needs."""
    return min(int(np.sqrt(side / 2) * 3), side - 1)


def _padded_depth(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``_infer_with_pad_aug``: pad, prepare for MiDaS, run, upsample to the padded size, crop."""
    import torch.nn.functional as F

    height, width = x.shape[-2:]
    pad_h, pad_w = _padding(height), _padding(width)
    padded = F.pad(x, [pad_w, pad_w, pad_h, pad_h], mode="reflect") if pad_h or pad_w else x
    net_h, net_w = multiple_of_size(*padded.shape[-2:], NET_SIZE, 32, "minimal")
    resized = F.interpolate(padded, (net_h, net_w), mode="bilinear", align_corners=True)
    weight = next(model.parameters())
    depth = model(pixel_values=((resized - 0.5) / 0.5).to(weight.dtype)).predicted_depth[:, None].float()
    if depth.shape[-2:] != padded.shape[-2:]:
        depth = F.interpolate(depth, padded.shape[-2:], mode="bicubic", align_corners=False)
    return depth[:, 0, pad_h : pad_h + height, pad_w : pad_w + width]


def infer(model: torch.nn.Module, x: torch.Tensor, *, one_pass: bool) -> torch.Tensor:
    """v1.1's ``model.infer(x)`` for an (N, 3, H, W) float32 batch in 0..1: (N, H, W) metric depth,
    the mean of the image's and its mirror's (mirrored back). ``one_pass`` runs both through one
    forward pass (on accelerators); otherwise two of one image each, as the reference does, so that
    the CPU picks the reference's kernels: the metric head's sharp bin distributions amplify float
    noise enough to tip nearly tied pixels."""
    import torch

    flipped = torch.flip(x, dims=[3])
    if one_pass:
        both = _padded_depth(model, torch.cat([x, flipped]))
        depth, depth_flipped = both[: x.shape[0]], both[x.shape[0] :]
    else:
        depth, depth_flipped = _padded_depth(model, x), _padded_depth(model, flipped)
    return (depth + torch.flip(depth_flipped, dims=[2])) / 2


def depth_to_uint8(depth: np.ndarray) -> np.ndarray:
    """v1.1's map from metric depth: percentile scaling (2nd -> 1, 85th -> 0) of the inverse, in
    float32 as the reference computes it with numpy 1.x."""
    low, high = np.percentile(depth, 2), np.percentile(depth, 85)
    span = np.float32(high - low)
    if not span > 0:
        return np.zeros(depth.shape, np.uint8)
    scaled = (depth.astype(np.float32) - np.float32(low)) / span
    return ((np.float32(1.0) - scaled) * np.float32(255.0)).clip(0, 255).astype(np.uint8)


@dataclass(frozen=True)
class DepthZoeConfig(NeuralConfig):
    weights_format: str = param(
        "original",
        f"original: v1.1's {CHECKPOINT}; transformers: the Hub conversion named by transformers_model",
        choices=("original", "transformers"),
    )
    transformers_model: str = param(
        TRANSFORMERS_MODELS[0],
        "with weights_format=transformers: zoedepth-nyu (v1.1's training) or zoedepth-nyu-kitti (another training)",
        choices=TRANSFORMERS_MODELS,
    )


_ORIGINAL = Weights(license=LICENSE, files=(WeightFile(CHECKPOINT, "annotators.nets.zoedepth:remap_zoedepth_checkpoint"),))


class DepthZoe(NeuralAnnotator):
    name = "depth_zoe"
    description = "ZoeDepth (BEiT-L MiDaS + metric bins) inverse depth, near is bright (v1.1 depth ControlNet)"
    Config = DepthZoeConfig
    config: DepthZoeConfig
    grayscale = True
    map_kind = "depth"
    weights = _ORIGINAL
    variants: ClassVar[dict[str, Weights]] = {
        "original": _ORIGINAL,
        **{model_id: Weights(license=LICENSE, format="transformers", model_id=model_id) for model_id in TRANSFORMERS_MODELS},
    }

    def __init__(self, config: DepthZoeConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        key = "original" if self.config.weights_format == "original" else self.config.transformers_model
        self.weights = self.variants[key]  # type: ignore[misc]

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.zoedepth import LAYER_NORM_EPS, build_zoedepth

        if self.weights.format != "transformers":
            return self.weights.load_into(build_zoedepth(), paths[0])
        from transformers import AutoConfig, AutoModelForDepthEstimation, ZoeDepthForDepthEstimation

        config = AutoConfig.from_pretrained(str(paths[0]), local_files_only=True)
        if config.model_type != "zoedepth":
            raise ValueError(f"{paths[0].name}: not a ZoeDepth model ({config.model_type})")
        config.backbone_config.layer_norm_eps = LAYER_NORM_EPS  # what the BEiT weights were trained with
        model = AutoModelForDepthEstimation.from_pretrained(str(paths[0]), config=config, local_files_only=True)
        assert isinstance(model, ZoeDepthForDepthEstimation)
        return model

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        import torch

        x = torch.from_numpy(np.stack(batch)).to(self.torch_device).permute(0, 3, 1, 2).float() / 255.0
        depth = infer(model, x.contiguous(), one_pass=self.torch_device.type != "cpu").cpu().numpy()
        return [depth_to_uint8(d) for d in depth]

