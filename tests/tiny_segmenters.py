"""Seeded tiny transformers segmenters, saved with ``save_pretrained`` as model folders (config,
weights, image processor): the stand-ins for the Hub models the segmentation annotators load, so
tests never download. Each has the 150 ADE20K labels (or COCO panoptic's 133) of the real models
and the real architecture, at widths and depths small enough to run in milliseconds. Their float
weights follow the parity fixtures' seeded rule (transformers' own initialisation makes every query
of the mask-classification models alike, so their maps would be one class)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from annotators.labels import ADE20K_CLASSES, COCO_PANOPTIC_CLASSES

SEED = 0
#: the side the tiny models' image processors resize to (the real ones use 512, 640 or 384)
SIDE = 64


def _labels(classes: tuple[str, ...]) -> dict[str, object]:
    return {"id2label": dict(enumerate(classes)), "label2id": {name: index for index, name in enumerate(classes)}}


def _seeded(model: Any) -> Any:
    """``model`` with its float weights replaced by the parity README's seeded rule (seed 0)."""
    import torch

    from tests.parity import seeded_arrays

    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    manifest = {"seed": SEED, "keys": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_arrays(manifest).items()}, strict=False)
    return model


def _save(model: Any, processor: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _seeded(model).save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)


def write_tiny_upernet(folder: Path) -> None:
    """UperNet on a 4-stage ConvNeXt, as ``openmmlab/upernet-convnext-*``."""
    from transformers import ConvNextConfig, SegformerImageProcessorPil, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_in_channels=32, use_auxiliary_head=False, **_labels(ADE20K_CLASSES))
    _save(UperNetForSemanticSegmentation(config), SegformerImageProcessorPil(size={"height": SIDE, "width": SIDE}), folder)


def write_tiny_segformer(folder: Path) -> None:
    """A 4-stage MiT encoder and the all-MLP decoder, as ``nvidia/segformer-b*-finetuned-ade-*``."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil

    config = SegformerConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 4], decoder_hidden_size=32, **_labels(ADE20K_CLASSES))
    _save(SegformerForSemanticSegmentation(config), SegformerImageProcessorPil(size={"height": SIDE, "width": SIDE}), folder)


def _tiny_swin() -> object:
    from transformers import SwinConfig

    return SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=SIDE, out_features=["stage1", "stage2", "stage3", "stage4"])


def write_tiny_mask2former(folder: Path) -> None:
    """Mask2Former with a Swin backbone, as ``facebook/mask2former-swin-*-ade-semantic``."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessorPil

    config = Mask2FormerConfig(
        backbone_config=_tiny_swin(), feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
        dim_feedforward=64, encoder_layers=1, decoder_layers=2, num_queries=8, num_attention_heads=4, **_labels(ADE20K_CLASSES),
    )
    processor = Mask2FormerImageProcessorPil(size={"shortest_edge": SIDE, "longest_edge": 4 * SIDE}, ignore_index=255)
    _save(Mask2FormerForUniversalSegmentation(config), processor, folder)


def _write_tiny_oneformer(folder: Path, classes: tuple[str, ...]) -> None:
    """OneFormer with a Swin backbone in the transformers layout, as ``shi-labs/oneformer_*_swin_large``
    (the annotators' own pipeline does the pre- and post-processing, so no processor is saved)."""
    from transformers import OneFormerConfig, OneFormerForUniversalSegmentation

    config = OneFormerConfig(
        backbone_config=_tiny_swin(), conv_dim=32, mask_dim=32, hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64,
        encoder_layers=1, decoder_layers=3, query_dec_layers=1, num_queries=8, num_attention_heads=4, is_training=False,
        output_auxiliary_logits=False, **_labels(classes),
    )
    _save(OneFormerForUniversalSegmentation(config), None, folder)


def write_tiny_oneformer_ade20k(folder: Path) -> None:
    _write_tiny_oneformer(folder, ADE20K_CLASSES)


def write_tiny_oneformer_coco(folder: Path) -> None:
    _write_tiny_oneformer(folder, COCO_PANOPTIC_CLASSES)
