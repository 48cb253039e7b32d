"""Sampler: one ControlNet, a MultiControlNet, on-the-fly annotation, guess mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from controlnet.sample import (
    ControlNetSpec,
    SampleConfig,
    SampleError,
    guess_mode_scales,
    load_controlnet,
    sample,
)


@pytest.fixture(scope="module")
def raw_photo(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(astronaut[::8, ::8]).save(path)  # 64 x 64
    return path


def test_guess_mode_scales_are_the_papers() -> None:
    scales = guess_mode_scales(13)
    assert scales[0] == pytest.approx(0.825**12) and scales[-1] == 1.0
    assert scales[5] == pytest.approx(0.825**7)


def test_guess_mode_scales_the_residuals_of_a_trained_controlnet(short_run) -> None:
    controlnet = load_controlnet(ControlNetSpec(str(short_run.controlnet_dir)), torch.float32)
    torch.manual_seed(0)
    inputs = {
        "sample": torch.randn(1, 4, 4, 4), "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 77, 32), "controlnet_cond": torch.rand(1, 3, 32, 32),
        "return_dict": False,
    }
    with torch.no_grad():
        down, mid = controlnet(**inputs, conditioning_scale=0.5)
        guess_down, guess_mid = controlnet(**inputs, conditioning_scale=0.5, guess_mode=True)
    scales = guess_mode_scales(len(down) + 1)
    for plain, guessed, scale in zip(down, guess_down, scales):
        torch.testing.assert_close(guessed, plain * scale)
    torch.testing.assert_close(guess_mid, mid)
    assert float(mid.abs().max()) > 0  # the trained zero convolution is not zero, so this means something


def test_one_controlnet_annotating_on_the_fly(short_run, tiny_base: Path, raw_photo: Path, tmp_path: Path) -> None:
    import annotators

    config = SampleConfig(
        base_model=str(tiny_base), controlnets=[ControlNetSpec(str(short_run.controlnet_dir), 1.0, "canny")],
        images=[str(raw_photo)], prompt="an astronaut", negative_prompt="blurry", steps=2, batch=2, seed=1,
        output_dir=str(tmp_path),
    )
    result = sample(config)
    assert len(result.images) == 2 and all(i.shape == (64, 64, 3) and i.dtype == np.uint8 for i in result.images)
    expected_condition = annotators.create("canny")([np.asarray(Image.open(raw_photo))])[0]
    np.testing.assert_array_equal(result.conditions[0], expected_condition)
    assert [p.name for p in result.paths] == ["sample-000.png", "sample-001.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(result.paths[1])), result.images[1])
    assert np.asarray(Image.open(result.grid_path)).shape == (64, 3 * 64, 3)
    # The same seed gives the same images.
    np.testing.assert_array_equal(sample(config).images[0], result.images[0])


def test_two_controlnets_from_the_cli_with_guess_mode(short_run, tiny_base: Path, raw_photo: Path, tmp_path: Path) -> None:
    from cli.sample import app
    from cli.train import export_app

    exported = tmp_path / "control.safetensors"
    assert CliRunner().invoke(export_app, [str(short_run.controlnet_dir), str(exported)]).exit_code == 0
    args = [
        "--base-model", str(tiny_base), "--image", str(raw_photo),
        "--controlnet", str(short_run.controlnet_dir), "--scale", "1.0", "--annotator", "canny",
        "--controlnet", str(exported), "--scale", "0.5", "--annotator", "none",
        "--steps", "2", "--guess-mode", "--control-start", "0.0", "--control-end", "0.5",
        "--width", "32", "--height", "32", "-o", str(tmp_path / "out"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(tmp_path / "out" / "grid.png"))
    assert grid.shape == (32, 3 * 32, 3)  # canny condition | raw photo as condition | one sample


def test_mismatched_counts_are_clear_errors(short_run, tiny_base: Path, raw_photo: Path) -> None:
    from cli.sample import app

    spec = ControlNetSpec(str(short_run.controlnet_dir))
    with pytest.raises(SampleError, match="one per ControlNet"):
        SampleConfig(str(tiny_base), [spec, spec, spec], images=["a.png", "b.png"])
    args = ["--base-model", str(tiny_base), "--image", str(raw_photo), "--controlnet", "a", "--controlnet", "b",
            "--scale", "1", "--scale", "1", "--scale", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "--scale" in result.output


@pytest.mark.filterwarnings("error::FutureWarning")
def test_conditions_are_read_as_annotators_read_images(short_run, tiny_base: Path, tmp_path: Path) -> None:
    """Alpha over white (and EXIF orientation) as annotators.image decodes; no deprecated arguments."""
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16, 3] = 255  # right half transparent
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba).save(path)
    result = sample(SampleConfig(
        base_model=str(tiny_base), controlnets=[ControlNetSpec(str(short_run.controlnet_dir))], images=[str(path)],
        steps=1, output_dir=str(tmp_path / "out"),
    ))
    assert (result.conditions[0][:, 16:] == 255).all() and (result.conditions[0][:, :16] == 0).all()
