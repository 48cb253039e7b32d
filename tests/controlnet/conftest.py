"""Shared fixtures: a tiny SD pipeline, cn-annotate-style datasets and one short training run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from controlnet.testing import (
    build_tiny_pipeline,
    build_tiny_sdxl_pipeline,
    write_dataset,
)

CAPTIONS = ["an astronaut", "a cup of coffee", "a cat", "a man with a camera"]


def thumbnails(photos: list[np.ndarray], longest: int) -> list[np.ndarray]:
    """The photographs shrunk to ``longest`` pixels on their long side, keeping their mixed shapes."""
    small = []
    for photo in photos:
        image = Image.fromarray(photo)
        image.thumbnail((longest, longest))
        small.append(np.asarray(image))
    return small


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sdxl_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def canny_dataset(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """Eight rows of mixed sizes (four photographs, and the same mirrored), built by cn-annotate canny."""
    images = thumbnails(photos, 64)
    images = images + [np.ascontiguousarray(i[:, ::-1]) for i in images]
    return write_dataset(tmp_path_factory.mktemp("canny-ds"), images, CAPTIONS * 2)


@pytest.fixture(scope="session")
def fixed_batch_dataset(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """Two rows: with batch size 2 every step sees the same samples."""
    images = thumbnails(photos[:2], 48)
    return write_dataset(tmp_path_factory.mktemp("fixed-ds"), images, CAPTIONS[:2])


@pytest.fixture(scope="session")
def short_run(tiny_base: Path, fixed_batch_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """30 steps on a fixed batch, with validation at the start and the end."""
    from controlnet.training.trainer import TrainConfig, train

    config = TrainConfig(
        base_model=str(tiny_base), dataset=str(fixed_batch_dataset),
        output_dir=str(tmp_path_factory.mktemp("short-run")), resolution=32, train_batch_size=2, max_steps=30,
        learning_rate=3e-3, empty_prompt_prob=0.0, checkpointing_steps=0, validation_steps=30,
        validation_inference_steps=2, num_validation_rows=2, num_validation_images=2,
    )
    return train(config)


@pytest.fixture(scope="session")
def sdxl_short_run(tiny_sdxl_base: Path, fixed_batch_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """The SDXL counterpart of ``short_run``: 60 steps on a fixed batch (the tiny SDXL UNet's loss
    is noisier step to step), validation at the start and the end."""
    from controlnet.training.trainer import TrainConfig, train

    config = TrainConfig(
        base_model=str(tiny_sdxl_base), dataset=str(fixed_batch_dataset),
        output_dir=str(tmp_path_factory.mktemp("sdxl-short-run")), resolution=32, train_batch_size=2, max_steps=60,
        learning_rate=3e-3, empty_prompt_prob=0.0, checkpointing_steps=0, validation_steps=60,
        validation_inference_steps=2, num_validation_rows=2, num_validation_images=2, report_to=None,
    )
    return train(config)
