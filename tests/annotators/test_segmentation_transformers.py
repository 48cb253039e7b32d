"""transformers-native ADE20K segmenters (``seg_upernet``, ``seg_segformer``, ``seg_mask2former``) on
tiny seeded models saved with ``save_pretrained`` (no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import annotators
from annotators.labels import ADE20K, ADE20K_PALETTE
from annotators.weights import WeightsNotFoundError
from tests import tiny_segmenters

FAMILIES: dict[str, tuple[Callable[[Path], None], str]] = {
    "seg_upernet": (tiny_segmenters.write_tiny_upernet, "AutoModelForSemanticSegmentation"),
    "seg_segformer": (tiny_segmenters.write_tiny_segformer, "AutoModelForSemanticSegmentation"),
    "seg_mask2former": (tiny_segmenters.write_tiny_mask2former, "AutoModelForUniversalSegmentation"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-segmenters")
    written = {}
    for name, (write, _) in FAMILIES.items():
        written[name] = root / name
        write(written[name])
    return written


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    from skimage import data

    astronaut, coffee = data.astronaut(), data.coffee()
    return [astronaut[100:172, 150:246].copy(), coffee[40:112, 200:296].copy(), astronaut[300:350, 60:140].copy()]


def _transformers_labels(folder: Path, auto_class: str, image: np.ndarray) -> np.ndarray:
    """What transformers itself predicts: the folder's processor, model and post-processing."""
    import transformers

    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    model = getattr(transformers, auto_class).from_pretrained(folder).eval()
    inputs = processor(images=[image], return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])[0].numpy()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_labels_are_transformers_own_and_the_map_is_the_ade20k_palette(name: str, folders: dict[str, Path], images: list[np.ndarray]) -> None:
    annotator = annotators.create(name, model=str(folders[name]))
    results = annotator.annotate(images)
    for image, result in zip(images, results):
        expected = _transformers_labels(folders[name], FAMILIES[name][1], image)
        assert result.data.dtype == np.uint8 and result.data.shape == image.shape[:2]
        np.testing.assert_array_equal(result.data, expected)
        np.testing.assert_array_equal(result.map, np.asarray(ADE20K_PALETTE, np.uint8)[result.data])
    assert annotator.data_kind is ADE20K
    assert len(np.unique(np.concatenate([r.data.ravel() for r in results]))) > 1  # not a constant map


@pytest.mark.parametrize("name", list(FAMILIES))
def test_hub_id_is_found_in_a_weights_folder(name: str, folders: dict[str, Path], tmp_path: Path) -> None:
    """``model=<Hub id>`` (the default) looks for a folder named after the model under ``weights``."""
    default = annotators.get_class(name).Config().model
    (tmp_path / default.rsplit("/", 1)[-1]).symlink_to(folders[name], target_is_directory=True)
    annotator = annotators.create(name, weights=str(tmp_path))
    assert annotator.locate_weights() == [tmp_path / default.rsplit("/", 1)[-1]]
    assert annotator.weights_identity()[0]["bytes"] > 0


def test_a_model_of_another_family_is_refused(folders: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="seg_segformer: a segformer model, but seg_upernet runs upernet"):
        annotators.create("seg_upernet", model=str(folders["seg_segformer"])).load()


def test_a_model_of_another_label_set_is_refused(tmp_path: Path) -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil

    config = SegformerConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 4], decoder_hidden_size=32, num_labels=19)
    SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "cityscapes")
    SegformerImageProcessorPil().save_pretrained(tmp_path / "cityscapes")
    with pytest.raises(ValueError, match="cityscapes: 19 classes, but seg_segformer draws ADE20K's 150"):
        annotators.create("seg_segformer", model=str(tmp_path / "cityscapes")).load()


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a transformers model folder"):
        annotators.create("seg_mask2former", model=str(tmp_path)).load()


def test_a_missing_model_is_one_line(no_weights: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="nvidia/segformer-b2-finetuned-ade-512-512 not found") as err:
        annotators.create("seg_segformer", model="nvidia/segformer-b2-finetuned-ade-512-512").load()
    assert "\n" not in str(err.value) and "hf download nvidia/segformer-b2-finetuned-ade-512-512" in str(err.value)


def test_the_model_is_part_of_the_identity() -> None:
    small = annotators.create("seg_upernet", model="openmmlab/upernet-convnext-tiny").config.identity()
    large = annotators.create("seg_upernet", model="openmmlab/upernet-convnext-large").config.identity()
    assert small != large and small["model"] == "openmmlab/upernet-convnext-tiny"


def test_annotates_again_after_close(folders: dict[str, Path], images: list[np.ndarray]) -> None:
    annotator = annotators.create("seg_segformer", model=str(folders["seg_segformer"]))
    first = annotator(images[:1])[0]
    annotator.close()
    np.testing.assert_array_equal(annotator(images[:1])[0], first)
