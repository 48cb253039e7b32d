"""Depth Anything V2 and V1 relative depth: sd-webui's ``depth_anything_v2`` and ``depth_anything``.

Method: Yang et al., "Depth Anything V2" (NeurIPS 2024) and "Depth Anything: Unleashing the Power
of Large-Scale Unlabeled Data" (CVPR 2024): a DINOv2 ViT/14 encoder and a DPT head, run as
transformers' ``DepthAnythingForDepthEstimation`` (see :mod:`annotators.nets.depth_anything`).
``encoder`` picks the size (vits, vitb, vitl; sd-webui uses vitl), ``weights_format`` the file:

  * ``original``: the authors' checkpoint, remapped by a pure function and loaded strictly.
    V2: ``depth_anything_v2_vit{s,b,l}.pth`` (``depth-anything/Depth-Anything-V2-{Small,Base,Large}``),
    or MackinationsAi's ``depth_anything_v2_vit{s,b,l}.safetensors`` copy that sd-webui downloads
    (same tensors and names). V1: ``depth_anything_vit{s,b,l}14.pth`` from the Hugging Face Space
    ``LiheYoung/Depth-Anything`` (``checkpoints/``), which sd-webui's ``depth_anything`` loads.
  * ``transformers``: the Hub conversions ``depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf``
    and ``LiheYoung/depth-anything-{small,base,large}-hf``, a model folder loaded with
    ``AutoModelForDepthEstimation``. Same weights; the pipeline below is applied to both.

Weights licences: V2 Small Apache-2.0, V2 Base and Large CC-BY-NC-4.0 (non-commercial); V1 all sizes
Apache-2.0 (the authors' model cards).

Semantics of sd-webui's ``DepthAnythingV2Detector`` (and V1's ``DepthAnythingDetector``, the same),
on the image at its own size:
  * ``cvtColor(BGR2RGB) / 255`` on the RGB input, i.e. the network sees the channels swapped to BGR
    (kept: the maps sd-webui users trained on come from it);
  * resize so that both sides are at least 518 and multiples of 14 (one scale; sides rounded
    half-to-even, up where that would fall under 518), ``cv2.INTER_CUBIC`` on the float64 image;
    ImageNet mean/std in float64, then float32;
  * the network; relative inverse depth after ReLU (near is large);
  * bilinear (``align_corners=False``) back to the image size, ``(d - min) / (max - min) * 255``
    in float32, truncated to uint8; a gray map (a constant depth gives black instead of 0/0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np

from annotators.base import param
from annotators.image import multiple_of_size
from annotators.nets.depth_anything import PATCH
from annotators.neural import NeuralAnnotator, NeuralConfig
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch

__all__ = ["DepthAnything", "DepthAnythingV2", "depth_to_uint8", "network_input"]

NET_SIDE = 518  # the reference's Resize target: both sides go to at least this
_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])
_REMAP = "annotators.nets.depth_anything:remap_depth_anything_checkpoint"
_SIZE_NAMES = {"vits": "Small", "vitb": "Base", "vitl": "Large"}


def network_input(image: np.ndarray) -> np.ndarray:
    """The reference preprocessing of one HxWx3 uint8 RGB image: a 3xhxw float32 array."""
    height, width = multiple_of_size(*image.shape[:2], (NET_SIDE, NET_SIDE), PATCH, "lower_bound")
    swapped = np.ascontiguousarray(image[:, :, ::-1]) / 255.0  # cvtColor(BGR2RGB) of the RGB input
    resized = cv2.resize(swapped, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(((resized - _MEAN) / _STD).transpose(2, 0, 1)).astype(np.float32)


def depth_to_uint8(depth: torch.Tensor) -> torch.Tensor:
    """Min-max scaling of each (N, H, W) float32 depth map to 0..255, truncated to uint8."""
    import torch

    low = depth.amin(dim=(1, 2), keepdim=True)
    span = depth.amax(dim=(1, 2), keepdim=True) - low
    scaled = (depth - low) / torch.where(span > 0, span, torch.ones_like(span)) * 255.0
    return scaled.to(torch.uint8)


def _original(version: int, encoder: str, license: str) -> Weights:
    if version == 2:
        return Weights(
            license=license,
            files=(WeightFile(f"depth_anything_v2_{encoder}.pth", _REMAP),),
            repo_id=f"depth-anything/Depth-Anything-V2-{_SIZE_NAMES[encoder]}",
        )
    filename = f"depth_anything_{encoder}14.pth"
    return Weights(
        license=license,
        files=(WeightFile(filename, _REMAP),),
        repo_id="LiheYoung/Depth-Anything",
        fetch_hint=f"fetch it once with `hf download LiheYoung/Depth-Anything checkpoints/{filename} --repo-type space`",
    )


def _transformers(version: int, encoder: str, license: str) -> Weights:
    size = _SIZE_NAMES[encoder]
    model_id = f"depth-anything/Depth-Anything-V2-{size}-hf" if version == 2 else f"LiheYoung/depth-anything-{size.lower()}-hf"
    return Weights(license=license, format="transformers", model_id=model_id)


@dataclass(frozen=True)
class DepthAnythingConfig(NeuralConfig):
    encoder: str = param("vitl", "ViT encoder size: vits (Small), vitb (Base), vitl (Large)", choices=("vits", "vitb", "vitl"))
    weights_format: str = param(
        "original",
        "original: the authors' checkpoint file; transformers: the Hub conversion's model folder",
        choices=("original", "transformers"),
    )


class _DepthAnythingBase(NeuralAnnotator):
    Config = DepthAnythingConfig
    config: DepthAnythingConfig
    grayscale = True
    map_kind = "depth"
    version: ClassVar[int]
    #: (weights_format, encoder) -> the weights, each with its own licence
    variants: ClassVar[dict[tuple[str, str], Weights]]

    def __init__(self, config: DepthAnythingConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        # The file, its Hub repo and its licence follow the configured size and format.
        self.weights = self.variants[(self.config.weights_format, self.config.encoder)]  # type: ignore[misc]

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.depth_anything import build_depth_anything, encoder_of, use_reference_pos_encoding

        encoder, version = self.config.encoder, self.version
        if self.weights.format != "transformers":
            return self.weights.load_into(build_depth_anything(encoder, version), paths[0])  # type: ignore[arg-type]
        from transformers import AutoModelForDepthEstimation, DepthAnythingForDepthEstimation

        model = AutoModelForDepthEstimation.from_pretrained(str(paths[0]), local_files_only=True)
        if not isinstance(model, DepthAnythingForDepthEstimation) or model.config.depth_estimation_type != "relative":
            raise ValueError(f"{paths[0].name}: not a Depth Anything relative-depth model ({type(model).__name__})")
        found = encoder_of(model.config)  # None for sizes other than the published ones (accepted)
        if found is not None and found != encoder:
            raise ValueError(f"{paths[0].name}: holds a {found} model, not {encoder}; pass encoder={found}")
        return use_reference_pos_encoding(model)

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        import torch
        import torch.nn.functional as F

        height, width = batch[0].shape[:2]
        x = torch.from_numpy(np.stack([network_input(image) for image in batch])).to(self.torch_device, self.torch_dtype)
        depth = model(pixel_values=x).predicted_depth  # (N, h, w), already through the head's ReLU
        depth = F.interpolate(depth[:, None].float(), (height, width), mode="bilinear", align_corners=False)[:, 0]
        return list(depth_to_uint8(depth).cpu().numpy())


def _variants(version: int, licenses: dict[str, str]) -> dict[tuple[str, str], Weights]:
    return {
        (fmt, encoder): make(version, encoder, licenses[encoder])
        for fmt, make in (("original", _original), ("transformers", _transformers))
        for encoder in ("vits", "vitb", "vitl")
    }


_V2_LICENSES = {"vits": "Apache-2.0", "vitb": "CC-BY-NC-4.0", "vitl": "CC-BY-NC-4.0"}


class DepthAnythingV2(_DepthAnythingBase):
    name = "depth_anything_v2"
    description = "Depth Anything V2 relative depth (DINOv2 + DPT), near is bright, as sd-webui's depth_anything_v2"
    version = 2
    variants = _variants(2, _V2_LICENSES)
    # What `cn-annotate list` shows: the default (vitl) file, and the licence of every size.
    weights = Weights(
        license="CC-BY-NC-4.0 (vitl, vitb); Apache-2.0 (vits)",
        files=variants[("original", "vitl")].files,
        repo_id=variants[("original", "vitl")].repo_id,
    )


class DepthAnything(_DepthAnythingBase):
    name = "depth_anything"
    description = "Depth Anything (V1) relative depth (DINOv2 + DPT), near is bright, as sd-webui's depth_anything"
    version = 1
    variants = _variants(1, dict.fromkeys(("vits", "vitb", "vitl"), "Apache-2.0"))
    weights = variants[("original", "vitl")]
