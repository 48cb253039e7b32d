"""Base models: the family read from model_index.json, and tiny pipelines that are conventional."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from controlnet.bases import UnsupportedBaseError, load_base


@pytest.mark.parametrize("base", ["tiny_base", "tiny_sdxl_base"])
def test_tiny_pipelines_run_diffusers_own_controlnet_defaults(base: str, request: pytest.FixtureRequest) -> None:
    """diffusers' ControlNetModel.from_unet with its defaults (an 8x condition encoder) and its own
    ControlNet pipeline run on the tiny pipelines as on real ones: their VAEs downsample 8x."""
    import torch
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionXLControlNetPipeline,
        UNet2DConditionModel,
    )

    folder = request.getfixturevalue(base)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    controlnet = ControlNetModel.from_unet(unet)
    if base == "tiny_base":
        pipeline = StableDiffusionControlNetPipeline.from_pretrained(
            folder, controlnet=controlnet, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    else:
        pipeline = StableDiffusionXLControlNetPipeline.from_pretrained(folder, controlnet=controlnet)
    assert pipeline.vae_scale_factor == 8
    pipeline.set_progress_bar_config(disable=True)
    condition = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    out = pipeline("a cat", image=condition, num_inference_steps=2, height=48, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 48, 64, 3) and np.isfinite(out).all()


def test_family_is_read_from_model_index(tiny_base: Path, tiny_sdxl_base: Path, tmp_path: Path) -> None:
    assert load_base(str(tiny_base)).family.name == "sd"
    sdxl = load_base(str(tiny_sdxl_base))
    assert sdxl.family.name == "sdxl" and sdxl.index["force_zeros_for_empty_prompt"] is True
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    with pytest.raises(UnsupportedBaseError, match="a FluxPipeline is not a base"):
        load_base(str(flux))
    with pytest.raises(UnsupportedBaseError, match="no model_index.json"):
        load_base(str(tmp_path))
    with pytest.raises(UnsupportedBaseError, match="does not exist"):
        load_base(str(tmp_path / "missing"))
