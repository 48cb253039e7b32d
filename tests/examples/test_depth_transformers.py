"""The transformers example annotator, on a tiny DPT with seeded weights saved as a model folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from examples.annotators.depth_transformers import DepthTransformers, depth_image


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(0)
    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=16,
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_in_index=-1,
    )
    folder = tmp_path_factory.mktemp("models") / "dpt-large"  # named after the model id, as a downloaded folder
    DPTForDepthEstimation(config).eval().save_pretrained(folder)
    return folder.parent


def test_depth_is_the_models_output_min_max_scaled(model_folder: Path, astronaut: np.ndarray) -> None:
    from transformers import AutoModelForDepthEstimation

    image = astronaut[::4, ::4].copy()  # 128 x 128
    annotator = DepthTransformers(weights=str(model_folder), size=64)
    (result,) = annotator([image])
    assert result.shape == (128, 128, 3) and result.min() == 0 and result.max() == 255

    import cv2

    model = AutoModelForDepthEstimation.from_pretrained(model_folder / "dpt-large").eval()
    pixels = cv2.resize(image, (64, 64), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    with torch.inference_mode():
        depth = model(pixel_values=torch.from_numpy((pixels.transpose(2, 0, 1)[None] - 0.5) / 0.5)).predicted_depth[None]
        depth = torch.nn.functional.interpolate(depth, (128, 128), mode="bilinear", align_corners=False)[0, 0].numpy()
    assert np.abs(result[:, :, 0].astype(int) - depth_image(depth)).max() <= 1


def test_constant_depth_gives_zeros() -> None:
    assert not depth_image(np.full((4, 5), 3.0)).any()
