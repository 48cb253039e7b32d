"""Export to the original ``control_model.*`` layout (A1111, ComfyUI) and back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from controlnet.training.export import (
    PREFIX,
    LayoutError,
    diffusers_to_original,
    load_original,
    original_to_diffusers,
)


def sd15_shaped_controlnet():
    """A ControlNet with Stable Diffusion 1.5's block structure (4 levels, 2 layers each, attention
    in the first three, the paper's hint encoder) but narrow channels."""
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    return ControlNetModel(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        conditioning_embedding_out_channels=(16, 32, 96, 256),
    )


def test_sd15_layout_has_the_original_module_names() -> None:
    keys = {k.removeprefix(PREFIX).rsplit(".", 1)[0] for k in diffusers_to_original(sd15_shaped_controlnet().state_dict())}
    # Facts of the original cldm layout: conv_in is input_blocks.0; levels take 3 input blocks each
    # (2 ResBlocks with SpatialTransformers, then a downsampler), the last level has no attention.
    assert "input_blocks.0.0" in keys
    assert {f"input_blocks.{i}.0.op" for i in (3, 6, 9)} <= keys
    assert {f"input_blocks.{i}.1.proj_in" for i in (1, 2, 4, 5, 7, 8)} <= keys
    assert not any(k.startswith(("input_blocks.10.1", "input_blocks.11.1", "input_blocks.12")) for k in keys)
    assert {f"input_blocks.{i}.0.in_layers.2" for i in (1, 2, 4, 5, 7, 8, 10, 11)} <= keys
    assert {f"zero_convs.{i}.0" for i in range(12)} <= keys and "zero_convs.12.0" not in keys
    assert {f"input_hint_block.{i}" for i in range(0, 16, 2)} == {k for k in keys if k.startswith("input_hint_block")}
    assert {"middle_block.0.emb_layers.1", "middle_block.1.proj_out", "middle_block.2.out_layers.3"} <= keys
    assert {"middle_block_out.0", "time_embed.0", "time_embed.2"} <= keys


def test_export_agrees_with_diffusers_own_converter() -> None:
    """diffusers' single-file loader converts our export back to the exact same state dict."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    model = sd15_shaped_controlnet()
    state = model.state_dict()
    converted = convert_controlnet_checkpoint(diffusers_to_original(state), dict(model.config))
    assert set(converted) == set(state)
    assert all(torch.equal(converted[k], state[k]) for k in state)


def test_round_trip_is_exact_and_rejects_unknown_keys() -> None:
    state = sd15_shaped_controlnet().state_dict()
    back = original_to_diffusers(diffusers_to_original(state))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    # Files without the prefix (as some distributions ship them) read the same.
    bare = {k.removeprefix(PREFIX): v for k, v in diffusers_to_original(state).items()}
    assert set(original_to_diffusers(bare)) == set(state)
    with pytest.raises(LayoutError):
        diffusers_to_original({**state, "class_embedding.linear_1.weight": torch.zeros(1)})


def test_cli_export_of_a_trained_controlnet_round_trips(short_run, tmp_path: Path) -> None:
    from diffusers import ControlNetModel
    from safetensors import safe_open

    from cli.train import export_app

    target = tmp_path / "control_tiny.safetensors"
    result = CliRunner().invoke(export_app, [str(short_run.controlnet_dir), str(target)])
    assert result.exit_code == 0, result.output
    with safe_open(str(target), framework="pt") as handle:
        assert all(k.startswith(PREFIX) for k in handle.keys())  # noqa: SIM118 (safe_open is not a dict)
    trained = ControlNetModel.from_pretrained(short_run.controlnet_dir).state_dict()
    back = load_original(target)
    assert set(back) == set(trained) and all(torch.equal(back[k], trained[k]) for k in trained)
    # Loads strictly into a fresh ControlNet of the same config.
    fresh = ControlNetModel.from_config(ControlNetModel.load_config(short_run.controlnet_dir))
    fresh.load_state_dict(back, strict=True)


def test_cli_export_refuses_other_suffixes(short_run, tmp_path: Path) -> None:
    from cli.train import export_app

    result = CliRunner().invoke(export_app, [str(short_run.controlnet_dir), str(tmp_path / "x.ckpt")])
    assert result.exit_code == 1 and "safetensors" in result.output


def test_training_can_start_from_an_exported_file(short_run, fixed_batch_dataset: Path, tiny_base: Path,
                                                  tmp_path: Path) -> None:
    from diffusers import ControlNetModel

    from cli.train import export_app
    from controlnet.training.trainer import TrainConfig, train

    exported = tmp_path / "init.safetensors"
    assert CliRunner().invoke(export_app, [str(short_run.controlnet_dir), str(exported)]).exit_code == 0
    result = train(
        TrainConfig(
            base_model=str(tiny_base), dataset=str(fixed_batch_dataset), output_dir=str(tmp_path / "run"),
            init_controlnet=str(exported), resolution=32, train_batch_size=2, max_steps=1, learning_rate=1e-12,
            checkpointing_steps=0, validation_steps=0, report_to=None,
        )
    )
    start = ControlNetModel.from_pretrained(short_run.controlnet_dir).state_dict()
    after = ControlNetModel.from_pretrained(result.controlnet_dir).state_dict()
    # One step at lr 1e-12 leaves the weights where the exported file put them (not at from_unet's zeros).
    assert all(torch.allclose(after[k], start[k], atol=1e-9) for k in start)
    assert float(after["controlnet_mid_block.weight"].abs().max()) > 0
