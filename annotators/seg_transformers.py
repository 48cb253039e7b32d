"""ADE20K segmenters native to transformers, drawn in the ADE20K palette: alternatives to the
reference ``seg_ufade20k`` for users who want a more recent or a lighter model.

Families (one annotator id each, the checkpoint chosen by ``model=``, a Hub id or a local folder):

* ``seg_upernet``: UperNet (Xiao et al., ECCV 2018) on ConvNeXt (Liu et al., CVPR 2022),
  ``openmmlab/upernet-convnext-{tiny,small,base,large,xlarge}`` (mmsegmentation's ADE20K models;
  MIT on their model cards).
* ``seg_segformer``: SegFormer (Xie et al., NeurIPS 2021), ``nvidia/segformer-b{0..5}-finetuned-ade-*``
  (model cards: "other", NVIDIA's SegFormer licence, non-commercial).
* ``seg_mask2former``: Mask2Former (Cheng et al., CVPR 2022), ``facebook/mask2former-swin-*-ade-semantic``
  (model cards: "other").

Each model is run as transformers runs it: the folder's own image processor (resize, rescale,
normalise), the model, and the processor's ``post_process_semantic_segmentation`` at the input's
size. Every one of these models predicts ADE20K's 150 classes in the SceneParsing order the
ControlNet seg models were trained on, so the map is ``palette[label]`` in the ADE20K palette
(:mod:`annotators.labels`) and the label map is returned as ``Annotation.data``. A model of another
label set is refused when it loads.

These are not the reference annotators: their maps differ from ``seg_ufade20k``'s and
``seg_ofade20k``'s (different networks), and no parity case covers them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from annotators.base import Annotation, param
from annotators.labels import ADE20K
from annotators.neural import NeuralAnnotator, NeuralConfig
from annotators.weights import Weights, find_model_folder

if TYPE_CHECKING:
    import torch


class _TransformersSegmenter(NeuralAnnotator):
    """Shared pipeline; subclasses name the family's model types and auto class."""

    data_kind = ADE20K
    map_kind = "segmentation"
    #: transformers ``model_type`` values this family accepts
    model_types: ClassVar[tuple[str, ...]]
    #: the transformers auto class that builds the family's segmentation model
    auto_class: ClassVar[str]

    def __init__(self, config: NeuralConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        self._processor: Any = None

    def locate_weights(self) -> list[Path]:
        """The model folder: ``model`` itself when it is a folder, else the Hub id looked up like
        any transformers model (``weights`` folder, ``$CN_ANNOTATE_WEIGHTS``, the Hub cache)."""
        model = Path(self.config.model).expanduser()  # type: ignore[attr-defined]
        if model.is_dir():
            if not (model / "config.json").is_file():
                raise ValueError(f"{model.name}: not a transformers model folder (no config.json)")
            return [model]
        return [find_model_folder(self.config.model, self.config.weights)]  # type: ignore[attr-defined]

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        import transformers

        folder = paths[0]
        config = transformers.AutoConfig.from_pretrained(folder)
        if config.model_type not in self.model_types:
            raise ValueError(f"{folder.name}: a {config.model_type} model, but {self.name} runs {' or '.join(self.model_types)}")
        if config.num_labels != len(ADE20K.classes):
            raise ValueError(f"{folder.name}: {config.num_labels} classes, but {self.name} draws ADE20K's {len(ADE20K.classes)}")
        self._processor = transformers.AutoImageProcessor.from_pretrained(folder)
        return getattr(transformers, self.auto_class).from_pretrained(folder)

    def close(self) -> None:
        super().close()
        self._processor = None

    def predict_labels(self, model: torch.nn.Module, batch: list[np.ndarray]) -> list[torch.Tensor]:
        """ADE20K class indices (H, W) per image, at the input size."""
        inputs = self._processor(images=batch, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.torch_device, self.torch_dtype)
        extra = {"pixel_mask": inputs["pixel_mask"].to(self.torch_device)} if "pixel_mask" in inputs else {}
        outputs = model(pixel_values=pixels, **extra)
        size = batch[0].shape[:2]
        return self._processor.post_process_semantic_segmentation(outputs, target_sizes=[size] * len(batch))

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[Annotation]:
        import torch

        return [ADE20K.annotation(labels.to("cpu", torch.uint8).numpy()) for labels in self.predict_labels(model, batch)]


def _model_param(default: str, examples: str) -> Any:
    return param(default, f"Hub id or local folder of the transformers model ({examples})")


@dataclass(frozen=True)
class SegUperNetConfig(NeuralConfig):
    model: str = _model_param("openmmlab/upernet-convnext-small", "openmmlab/upernet-convnext-{tiny,small,base,large,xlarge}")


@dataclass(frozen=True)
class SegSegFormerConfig(NeuralConfig):
    model: str = _model_param("nvidia/segformer-b0-finetuned-ade-512-512", "nvidia/segformer-b{0..5}-finetuned-ade-*")


@dataclass(frozen=True)
class SegMask2FormerConfig(NeuralConfig):
    model: str = _model_param("facebook/mask2former-swin-large-ade-semantic", "facebook/mask2former-swin-{tiny,small,base,large}-ade-semantic")


class SegUperNet(_TransformersSegmenter):
    name = "seg_upernet"
    description = "UperNet-ConvNeXt ADE20K segmentation (transformers), ADE20K palette; an alternative to seg_ufade20k"
    Config = SegUperNetConfig
    weights = Weights(license="MIT (openmmlab/upernet-convnext-* model cards)", format="transformers", model_id=SegUperNetConfig.model)
    model_types = ("upernet",)
    auto_class = "AutoModelForSemanticSegmentation"


class SegSegFormer(_TransformersSegmenter):
    name = "seg_segformer"
    description = "SegFormer ADE20K segmentation (transformers), ADE20K palette; a light alternative to seg_ufade20k"
    Config = SegSegFormerConfig
    weights = Weights(license="other: NVIDIA SegFormer licence, non-commercial (nvidia/segformer-* model cards)", format="transformers", model_id=SegSegFormerConfig.model)
    model_types = ("segformer",)
    auto_class = "AutoModelForSemanticSegmentation"


class SegMask2Former(_TransformersSegmenter):
    name = "seg_mask2former"
    description = "Mask2Former ADE20K semantic segmentation (transformers), ADE20K palette; an alternative to seg_ufade20k"
    Config = SegMask2FormerConfig
    weights = Weights(license="other (facebook/mask2former-* model cards)", format="transformers", model_id=SegMask2FormerConfig.model)
    model_types = ("mask2former",)
    auto_class = "AutoModelForUniversalSegmentation"
