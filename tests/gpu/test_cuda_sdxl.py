"""SDXL on CUDA: the trainer in fp16 and bf16 with the memory recipes (SDXL's own VAE encodes in
float32 there), and the sampler in float16 (the pipeline upcasts that VAE to decode). Skipped where
no CUDA device is present; written without one, so these have not run yet."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from controlnet.testing import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    from PIL import Image

    from controlnet.testing import write_dataset

    small = []
    for photo in photos:
        image = Image.fromarray(photo)
        image.thumbnail((64, 64))
        small.append(np.asarray(image))
    return write_dataset(tmp_path_factory.mktemp("canny-ds"), small, ["an astronaut", "coffee", "a cat", "a camera"])


@pytest.mark.parametrize("mixed_precision", ["fp16", "bf16"])
def test_sdxl_trainer_on_cuda_with_the_memory_recipes(mixed_precision: str, tiny_sdxl: Path, dataset: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from controlnet.training.trainer import TrainConfig, train

    config = TrainConfig(
        base_model=str(tiny_sdxl), dataset=str(dataset), output_dir=str(tmp_path), resolution=32, train_batch_size=2,
        max_steps=4, mixed_precision=mixed_precision, learning_rate=1e-4, gradient_checkpointing=True,
        cache_latents=True, cache_text_embeddings=True, checkpointing_steps=2, validation_steps=4,
        validation_inference_steps=2, num_validation_rows=1, num_validation_images=1, report_to=None,
    )
    result = train(config)
    print(f"sdxl trainer {mixed_precision}: losses {result.losses}, peak memory {result.peak_memory_bytes}")
    assert result.global_step == 4 and all(math.isfinite(loss) for loss in result.losses), result.losses
    assert result.peak_memory_bytes
    assert (tmp_path / "cache" / "latents" / "manifest.json").is_file()
    assert (tmp_path / "validation" / "step-000004.png").is_file()
    weights = load_file(result.controlnet_dir / "diffusion_pytorch_model.safetensors")
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in weights.values())


def test_sdxl_sampler_on_cuda_in_float16(tiny_sdxl: Path, tmp_path: Path) -> None:
    from diffusers import ControlNetModel, UNet2DConditionModel
    from PIL import Image

    from controlnet.sample import ControlNetSpec, SampleConfig, sample

    controlnet = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(tiny_sdxl, subfolder="unet"))
    controlnet.save_pretrained(tmp_path / "controlnet")
    condition = tmp_path / "condition.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(condition)
    result = sample(SampleConfig(
        base_model=str(tiny_sdxl), controlnets=[ControlNetSpec(str(tmp_path / "controlnet"))], images=[str(condition)],
        steps=2, device="cuda", dtype="float16", output_dir=str(tmp_path / "out"),
    ))
    assert result.images[0].shape == (64, 64, 3)
