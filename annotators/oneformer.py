"""OneFormer semantic segmentation: ControlNet v1.1's ``seg_ofade20k`` and ``seg_ofcoco``.

Method: Jain et al., "OneFormer: One Transformer to Rule Universal Image Segmentation" (CVPR 2023),
Swin-L backbone, the semantic task; run on transformers' ``OneFormerForUniversalSegmentation``
(:mod:`annotators.nets.oneformer`). Weights (SHI-Labs/OneFormer, MIT licence), either of:

* the detectron2 checkpoints the reference loads from ``lllyasviel/Annotators``,
  ``250_16_swin_l_oneformer_ade20k_160k.pth`` (250 queries, 150 ADE20K classes) and
  ``150_16_swin_l_oneformer_coco_100ep.pth`` (150 queries, 133 COCO panoptic classes), state dict
  under ``model``, renamed by a pure remap; the training-only text encoder is dropped and every
  weight inference uses is loaded strictly;
* the transformers conversions ``shi-labs/oneformer_ade20k_swin_large`` and
  ``shi-labs/oneformer_coco_swin_large`` (a model folder, or the Hub cache), used when the
  detectron2 file is not found or ``weights`` names such a folder.

Semantics of the reference (``OneformerADE20kDetector`` / ``OneformerCOCODetector``, ``semantic_run``):
  * PIL bilinear resize of the RGB uint8 image so that the short side is 640 (ADE20K) or 800
    (COCO), the long side at most 2560 / 1333 (detectron2 ``ResizeShortestEdge``, sides rounded
    half up); ``resolution`` moves the short side (and the cap with it);
  * ``(x - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]`` on RGB, zero padding at the bottom
    and right to a multiple of 32;
  * the task "The task is semantic" as 77 CLIP token ids (:data:`SEMANTIC_TASK_TOKENS`);
  * ``pred_masks`` (1/4) resized bilinearly to the padded size, cropped to the resized image,
    resized bilinearly to the input size; ``softmax(class logits)`` without the no-object column
    times ``sigmoid(masks)`` summed over queries, arg-maxed;
  * the map drawn by detectron2's Visualizer (:func:`annotators.seg_render.draw_sem_seg`): palette
    polygons with 1 px white anti-aliased edges on white (the reference commit's colours).
    ``edges=False`` gives the flat ``palette[label]`` map instead, a deviation from the reference.
The label map (HxW uint8 class indices) is returned as ``Annotation.data``.

The task ids are pinned data: the CLIP tokenizer's vocabulary ships with neither checkpoint, and
the text never changes. They were derived once from CLIP's BPE vocabulary
(``bpe_simple_vocab_16e6``, the file OneFormer's tokenizer reads) with transformers'
``CLIPTokenizer``: start 49406, "the" 518, "task" 10549, "is" 533, "semantic" 29119 + 1550, end
49407, then zeros as OneFormer pads; the tests check them against the reference's ``dbg_task_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from annotators.base import Annotation, param
from annotators.data import SegmentationKind
from annotators.labels import ADE20K, COCO_PANOPTIC
from annotators.neural import NeuralAnnotator, NeuralConfig
from annotators.seg_render import draw_sem_seg, flat
from annotators.weights import WeightFile, Weights, WeightsNotFoundError

if TYPE_CHECKING:
    import torch

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
SIZE_DIVISIBILITY = 32
TASK_LENGTH = 77
#: "The task is semantic" in CLIP BPE ids, padded with zeros to 77 (see the module docstring)
SEMANTIC_TASK_TOKENS: tuple[int, ...] = (49406, 518, 10549, 533, 29119, 1550, 49407) + (0,) * (TASK_LENGTH - 7)
LICENSE = "MIT (SHI-Labs/OneFormer)"
REMAP = "annotators.nets.oneformer:remap_oneformer_checkpoint"


def resize_shortest_edge(height: int, width: int, short: int, max_size: float) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge``: the short side to ``short``, unless the long side would
    pass ``max_size``; sides rounded half up."""
    scale = short / min(height, width)
    new_height, new_width = (short, scale * width) if height < width else (scale * height, short)
    if max(new_height, new_width) > max_size:
        shrink = max_size / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return int(new_height + 0.5), int(new_width + 0.5)


def semantic_inference(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, padded: Sequence[int], resized: Sequence[int], output: Sequence[int]
) -> torch.Tensor:
    """OneFormer's semantic post-processing of a batch: class logits (N, Q, C+1) and mask logits
    (N, Q, h, w) to per-class scores (N, C, H, W) at the ``output`` size. The masks are resized to
    the ``padded`` network input, cropped to the ``resized`` image, and resized to ``output``."""
    import torch
    import torch.nn.functional as F

    masks = F.interpolate(mask_logits, size=tuple(padded), mode="bilinear", align_corners=False)
    masks = masks[:, :, : resized[0], : resized[1]]
    masks = F.interpolate(masks, size=tuple(output), mode="bilinear", align_corners=False)
    classes = class_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("nqc,nqhw->nchw", classes, masks.sigmoid())


@dataclass(frozen=True)
class SegOFADE20KConfig(NeuralConfig):
    resolution: int = param(640, "short side the network sees (the reference's 640; the long side is capped at 4x it)", ge=32, le=4096)
    edges: bool = param(True, "draw like the reference (palette polygons with 1 px white anti-aliased edges); false: flat palette[label], a deviation")


@dataclass(frozen=True)
class SegOFCOCOConfig(NeuralConfig):
    resolution: int = param(800, "short side the network sees (the reference's 800; the long side is capped at 1333/800 of it)", ge=32, le=4096)
    edges: bool = param(True, "draw like the reference (palette polygons with 1 px white anti-aliased edges); false: flat palette[label], a deviation")


class _OneFormer(NeuralAnnotator):
    """The shared pipeline; subclasses fix the checkpoint, the label set and the reference input sizes."""

    config: SegOFADE20KConfig | SegOFCOCOConfig
    data_kind: ClassVar[SegmentationKind]
    map_kind = "segmentation"
    #: the transformers conversion of the same weights, used when the detectron2 file is not found
    converted: ClassVar[Weights]
    num_queries: ClassVar[int]
    #: detectron2's MIN_SIZE_TEST and MAX_SIZE_TEST of the reference config
    min_size: ClassVar[int]
    max_size: ClassVar[int]

    @classmethod
    def weights_present(cls, weights: str | None = None) -> bool:
        return cls.weights.present(weights) or cls.converted.present(weights)

    def locate_weights(self) -> list[Path]:
        """The detectron2 checkpoint, or else a transformers model folder of the conversion."""
        explicit = self.config.weights
        if explicit and (Path(explicit) / "config.json").is_file():
            return [Path(explicit)]
        try:
            return self.weights.locate(explicit)
        except WeightsNotFoundError as missing:
            try:
                return self.converted.locate(explicit, local_files_only=True)
            except WeightsNotFoundError:
                raise missing from None

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from transformers import OneFormerForUniversalSegmentation

        from annotators.nets.oneformer import oneformer_swin_large_config

        classes = self.data_kind.classes
        if paths[0].is_dir():
            model = OneFormerForUniversalSegmentation.from_pretrained(paths[0], is_training=False)
            if model.config.num_labels != len(classes):
                raise ValueError(f"{paths[0].name}: a OneFormer of {model.config.num_labels} classes, expected {len(classes)} ({self.data_kind.label_set})")
            return model
        model = OneFormerForUniversalSegmentation(oneformer_swin_large_config(self.num_queries, classes))
        self.weights.load_into(model.model, paths[0])  # the loss module has no weights to load
        return model

    def network_input(self, batch: list[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int]]:
        """The resized, normalised, zero-padded batch, and the resized (unpadded) size."""
        import torch
        import torch.nn.functional as F
        from PIL import Image

        height, width = batch[0].shape[:2]
        scale = self.config.resolution / self.min_size
        size = resize_shortest_edge(height, width, self.config.resolution, self.max_size * scale)
        if size != (height, width):
            batch = [np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR)) for image in batch]
        x = self.to_tensor(batch).float()
        mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        pad_bottom = -size[0] % SIZE_DIVISIBILITY
        pad_right = -size[1] % SIZE_DIVISIBILITY
        x = F.pad(x, (0, pad_right, 0, pad_bottom))  # zeros after normalisation, as detectron2's ImageList
        return x.to(self.torch_dtype), size

    def forward_logits(self, model: torch.nn.Module, batch: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], tuple[int, int]]:
        """The network's class (N, Q, C+1) and mask (N, Q, h, w) logits in float32, with the padded
        and the resized (unpadded) input sizes."""
        import torch

        x, size = self.network_input(batch)
        task = torch.tensor([SEMANTIC_TASK_TOKENS] * len(batch), device=x.device, dtype=x.dtype)
        outputs = model(pixel_values=x, task_inputs=task)
        padded = (x.shape[2], x.shape[3])
        return outputs.class_queries_logits.float(), outputs.masks_queries_logits.float(), padded, size

    def predict_scores(self, model: torch.nn.Module, batch: list[np.ndarray]) -> torch.Tensor:
        """Per-class scores (N, C, H, W) at the input size."""
        class_logits, mask_logits, padded, size = self.forward_logits(model, batch)
        return semantic_inference(class_logits, mask_logits, padded, size, batch[0].shape[:2])

    def draw(self, labels: np.ndarray) -> np.ndarray:
        palette = self.data_kind.palette
        return draw_sem_seg(labels, palette) if self.config.edges else flat(labels, palette)

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[Annotation]:
        import torch

        class_logits, mask_logits, padded, size = self.forward_logits(model, batch)
        results = []
        for index in range(len(batch)):  # one image at a time: its queries' full-size masks are the memory peak
            scores = semantic_inference(class_logits[index : index + 1], mask_logits[index : index + 1], padded, size, batch[0].shape[:2])
            labels = scores.argmax(dim=1)[0].to("cpu", torch.uint8).numpy()
            results.append(Annotation(self.draw(labels), labels))
        return results


class SegOFADE20K(_OneFormer):
    name = "seg_ofade20k"
    description = "OneFormer Swin-L ADE20K semantic segmentation, drawn as the reference (v1.1 seg_ofade20k)"
    Config = SegOFADE20KConfig
    config: SegOFADE20KConfig
    weights = Weights(license=LICENSE, files=(WeightFile("250_16_swin_l_oneformer_ade20k_160k.pth", REMAP),))
    converted = Weights(license=LICENSE, format="transformers", model_id="shi-labs/oneformer_ade20k_swin_large")
    data_kind = ADE20K
    num_queries = 250
    min_size, max_size = 640, 2560


class SegOFCOCO(_OneFormer):
    name = "seg_ofcoco"
    description = "OneFormer Swin-L COCO panoptic-class semantic segmentation, drawn as the reference (v1.1 seg_ofcoco)"
    Config = SegOFCOCOConfig
    config: SegOFCOCOConfig
    weights = Weights(license=LICENSE, files=(WeightFile("150_16_swin_l_oneformer_coco_100ep.pth", REMAP),))
    converted = Weights(license=LICENSE, format="transformers", model_id="shi-labs/oneformer_coco_swin_large")
    data_kind = COCO_PANOPTIC
    num_queries = 150
    min_size, max_size = 800, 1333
