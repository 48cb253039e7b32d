"""Trainer: data transforms and order, the paper's recipe, checkpoints, kill -9 and exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from controlnet.training.data import (
    Columns,
    EpochBatchSampler,
    PairDataset,
    PairTransform,
    Position,
    load_rows,
)
from controlnet.training.trainer import TrainConfig, TrainError
from tests.controlnet.helpers import logged_steps

REPO = Path(__file__).resolve().parents[3]


def test_pair_transform_gives_condition_the_image_geometry() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)
    transform = PairTransform(resolution=24, center_crop=False, random_flip=True)
    seen_flip = set()
    for seed in range(8):
        pixels, cond = transform(Image.fromarray(photo), Image.fromarray(photo), np.random.default_rng(seed))
        assert pixels.shape == cond.shape == (3, 24, 24)
        # The same photo as image and condition: identical crops and flips, only the ranges differ.
        np.testing.assert_allclose((pixels.numpy() + 1) / 2, cond.numpy(), atol=1e-5)
        seen_flip.add(float(pixels[0, 0, 0]))
    assert len(seen_flip) > 1  # random crops/flips actually vary with the seed


def test_pair_transform_resizes_a_smaller_condition_to_the_image() -> None:
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    condition = Image.new("RGB", (20, 10), (0, 255, 0))
    pixels, cond = PairTransform(resolution=32)(image, condition, np.random.default_rng(0))
    assert pixels.shape == cond.shape == (3, 32, 32)
    assert float(cond[1].min()) == pytest.approx(1.0) and float(cond[0].max()) == pytest.approx(0.0)


def test_epoch_batches_cover_each_row_once_per_epoch_and_resume_in_place() -> None:
    rows, batch, world = 10, 2, 2  # 2 global batches of 4 per epoch; 2 rows dropped each epoch
    samplers = [EpochBatchSampler(rows, batch, seed=3, rank=r, world_size=world) for r in range(world)]
    streams = [iter(s) for s in samplers]
    epoch0 = [key for _ in range(2) for stream in streams for key in next(stream)]
    assert {e for e, _ in epoch0} == {0} and len({r for _, r in epoch0}) == 8
    # Resuming at (epoch 1, batch 1) yields what the uninterrupted stream yields there.
    next(streams[0])
    expected = next(streams[0])
    resumed = EpochBatchSampler(rows, batch, seed=3, rank=0, world_size=world, start=Position(1, 1))
    assert next(iter(resumed)) == expected
    assert samplers[0].advance(Position(0, 1)) == Position(1, 0)


def test_empty_prompt_probability_is_applied_per_sample_and_reproducibly(canny_dataset: Path) -> None:
    rows = load_rows(str(canny_dataset))
    dataset = PairDataset(rows, PairTransform(32), Columns(), empty_prompt_prob=0.5, seed=0)
    captions = [dataset[(epoch, row)]["caption"] for epoch in range(25) for row in range(len(rows))]
    empty = sum(c == "" for c in captions) / len(captions)
    assert 0.4 < empty < 0.6
    assert [dataset[(3, r)]["caption"] for r in range(8)] == [dataset[(3, r)]["caption"] for r in range(8)]
    never = PairDataset(rows, PairTransform(32), Columns(), empty_prompt_prob=0.0, seed=0)
    assert all(never[(0, r)]["caption"] for r in range(len(rows)))


def test_missing_column_is_a_clear_error(canny_dataset: Path) -> None:
    from controlnet.training.data import DataError

    with pytest.raises(DataError, match="no conditioning column 'depth'"):
        PairDataset(load_rows(str(canny_dataset)), PairTransform(32), Columns(condition="depth"), 0.5, 0)


def test_config_rejects_bad_options() -> None:
    with pytest.raises(TrainError, match="empty_prompt_prob"):
        TrainConfig(base_model="b", dataset="d", empty_prompt_prob=1.5)
    with pytest.raises(TrainError, match="exclude"):
        TrainConfig(base_model="b", dataset="d", unlock_decoder=True, only_mid_control=True)
    with pytest.raises(TrainError, match="controlnet_init=.uniform. is invalid: must be one of .zero., .gaussian."):
        TrainConfig(base_model="b", dataset="d", controlnet_init="uniform")  # type: ignore[arg-type]
    with pytest.raises(TrainError, match="not to one given by init_controlnet"):
        TrainConfig(base_model="b", dataset="d", init_controlnet="cn", controlnet_init="gaussian")
    with pytest.raises(TrainError, match="max_steps"):
        TrainConfig(base_model="b", dataset="d", max_steps=-1)


@pytest.mark.parametrize("init", ["zero", "gaussian"])
def test_max_steps_0_saves_the_initial_controlnet(init: str, tiny_base: Path, fixed_batch_dataset: Path, tmp_path: Path) -> None:
    """Zero init: every connecting convolution (and the condition encoder's last) is zero. Gaussian:
    drawn from N(0, 1/fan_in), seeded, and the encoder copy is the UNet's either way."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from controlnet.training.trainer import train

    def initial(seed: int, folder: Path) -> ControlNetModel:
        result = train(TrainConfig(
            base_model=str(tiny_base), dataset=str(fixed_batch_dataset), output_dir=str(folder), resolution=32,
            train_batch_size=2, max_steps=0, controlnet_init=init, seed=seed, report_to=None,  # type: ignore[arg-type]
        ))
        assert result.global_step == 0 and result.losses == []
        return ControlNetModel.from_pretrained(result.controlnet_dir)

    controlnet = initial(0, tmp_path / "a")
    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    assert torch.equal(controlnet.down_blocks[0].resnets[0].conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight)
    layers = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]
    if init == "zero":
        assert all(float(layer.weight.detach().abs().max()) == 0 for layer in layers)
        return
    weights = torch.cat([(layer.weight.detach() * layer.weight[0].numel() ** 0.5).flatten() for layer in layers])
    assert abs(float(weights.std()) - 1.0) < 0.05 and abs(float(weights.mean())) < 0.05
    assert all(float(layer.bias.detach().abs().max()) == 0 for layer in layers)
    again, other = initial(0, tmp_path / "b"), initial(1, tmp_path / "c")
    assert torch.equal(again.controlnet_mid_block.weight, controlnet.controlnet_mid_block.weight)
    assert not torch.equal(other.controlnet_mid_block.weight, controlnet.controlnet_mid_block.weight)


def test_8bit_adam_without_bitsandbytes_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from controlnet.training.trainer import _make_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(TrainError, match="pip install bitsandbytes"):
        _make_optimizer(TrainConfig(base_model="b", dataset="d", use_8bit_adam=True), [{"params": []}])


def test_loss_is_finite_and_falls_on_a_fixed_batch(short_run) -> None:
    losses = np.array(short_run.losses)
    assert short_run.global_step == 30 and len(losses) == 30
    assert np.isfinite(losses).all()
    first, last = losses[:5].mean(), losses[-5:].mean()
    assert last < 0.9 * first, (first, last)


def test_run_saves_a_loadable_controlnet_with_trained_zero_convolutions(short_run, tiny_base: Path) -> None:
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    folder = short_run.controlnet_dir
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    controlnet = ControlNetModel.from_pretrained(folder)
    # from_unet starts the zero convolutions at zero; training must have moved them.
    assert float(controlnet.controlnet_mid_block.weight.detach().abs().max()) > 0
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_base, controlnet=controlnet, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    assert isinstance(pipeline.controlnet, ControlNetModel)
    assert torch.equal(pipeline.controlnet.controlnet_mid_block.weight, controlnet.controlnet_mid_block.weight)


def test_validation_grid_and_tensorboard_logs(short_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    grids = sorted((short_run.output_dir / "validation").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-000000.png", "step-000030.png"]
    grid = np.asarray(Image.open(grids[-1]))
    assert grid.shape == (2 * 32, 3 * 32, 3)  # 2 validation rows x (condition | 2 samples)
    events = EventAccumulator(str(short_run.output_dir / "logs" / "cn-train"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == list(range(1, 31))
    assert [e.value for e in loss] == pytest.approx(short_run.losses, rel=1e-6)
    assert [e.step for e in events.Images("validation")] == [0, 30]


def test_only_mid_control_trains_no_down_zero_convolution(tiny_base: Path, fixed_batch_dataset: Path, tmp_path: Path) -> None:
    from diffusers import ControlNetModel

    from controlnet.training.trainer import train

    result = train(
        TrainConfig(
            base_model=str(tiny_base), dataset=str(fixed_batch_dataset), output_dir=str(tmp_path), resolution=32,
            train_batch_size=2, max_steps=2, learning_rate=1e-3, only_mid_control=True, checkpointing_steps=0,
            validation_steps=0, report_to=None,
        )
    )
    controlnet = ControlNetModel.from_pretrained(result.controlnet_dir)
    assert all(float(b.weight.detach().abs().max()) == 0 for b in controlnet.controlnet_down_blocks)
    assert float(controlnet.controlnet_mid_block.weight.detach().abs().max()) > 0


def test_unlock_decoder_trains_the_decoder_at_its_own_rate(tiny_base: Path, fixed_batch_dataset: Path, tmp_path: Path) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from controlnet.training.trainer import train

    result = train(
        TrainConfig(
            base_model=str(tiny_base), dataset=str(fixed_batch_dataset), output_dir=str(tmp_path), resolution=32,
            train_batch_size=2, max_steps=2, learning_rate=1e-3, decoder_learning_rate=1e-4, unlock_decoder=True,
            checkpointing_steps=0, validation_steps=0, report_to=None, gradient_checkpointing=True,
            gradient_accumulation_steps=2, log_samples=True,
        )
    )
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [len(r["ids"]) for r in records] == [4, 4]  # 2 micro-batches of 2 per optimizer step
    base = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    trained = UNet2DConditionModel.from_pretrained(result.output_dir / "unet")
    assert torch.equal(base.down_blocks[0].resnets[0].conv1.weight, trained.down_blocks[0].resnets[0].conv1.weight)
    moved = (trained.conv_out.weight - base.conv_out.weight).abs().max().item()
    # Adam moves each weight by about its learning rate per step: 2 steps at 1e-4.
    assert 1e-5 < moved < 5e-4


def test_bf16_mixed_precision_keeps_float32_controlnet_weights(tiny_base: Path, fixed_batch_dataset: Path,
                                                               tmp_path: Path) -> None:
    import torch
    from diffusers import ControlNetModel

    from controlnet.training.trainer import train

    result = train(
        TrainConfig(
            base_model=str(tiny_base), dataset=str(fixed_batch_dataset), output_dir=str(tmp_path), resolution=32,
            train_batch_size=2, max_steps=2, learning_rate=1e-3, mixed_precision="bf16", checkpointing_steps=0,
            validation_steps=2, validation_inference_steps=1, num_validation_images=1, report_to=None,
        )
    )
    assert np.isfinite(result.losses).all()
    controlnet = ControlNetModel.from_pretrained(result.controlnet_dir)
    assert controlnet.dtype == torch.float32
    assert float(controlnet.controlnet_mid_block.weight.detach().abs().max()) > 0
    assert (tmp_path / "validation" / "step-000002.png").is_file()


def test_kill_9_and_resume_latest_is_exact(tiny_base: Path, canny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "cli.train", "--base-model", str(tiny_base), "--dataset", str(canny_dataset),
        "-o", str(out), "--resolution", "32", "--batch-size", "2", "--max-steps", "12", "--learning-rate", "1e-3",
        "--checkpointing-steps", "3", "--checkpoints-total-limit", "2", "--validation-steps", "0",
        "--report-to", "none", "--log-samples", "--seed", "7", "--resume", "latest", "--lr-scheduler", "linear",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = out / "samples.jsonl"
    stderr = (tmp_path / "first.err").open("w")  # a file, not a pipe that could fill and block the run
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    killed_after = None
    while time.monotonic() < deadline and first.poll() is None:
        steps = sorted(logged_steps(log)[0]) if log.exists() else []
        if (out / "checkpoint-3").is_dir() and steps and steps[-1] >= 4 and steps[-1] % 3:
            first.send_signal(signal.SIGKILL)
            killed_after = steps[-1]
            break
        time.sleep(0.05)
    first.wait()
    stderr.close()
    assert killed_after is not None, (tmp_path / "first.err").read_text()[-2000:]
    assert first.returncode == -signal.SIGKILL

    second = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-2000:]
    final, replayed = logged_steps(log)
    assert sorted(final) == list(range(1, 13))
    # Steps run after the last checkpoint were run again on resume: same samples, same learning rate
    # (the linear schedule decays every step), same loss (same weights, noise and timesteps).
    assert replayed, "the kill must have happened after a step that no checkpoint covered"
    for before, after in replayed:
        assert before["ids"] == after["ids"]
        assert after["lr"] == before["lr"]
        assert after["loss"] == pytest.approx(before["loss"], rel=1e-6, abs=1e-7)
    assert final[12]["lr"] < final[1]["lr"]
    # 12 steps x 2 samples over 8 rows: each row seen exactly 3 times.
    counts = Counter(sample for record in final.values() for sample in record["ids"])
    assert sorted(counts) == [f"{k:05d}.png" for k in range(8)]
    assert set(counts.values()) == {3}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-9"]
    assert json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["global_step"] == 12
    assert (out / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    assert math.isfinite(final[12]["loss"])


def test_two_cpu_processes_share_each_global_batch(tiny_base: Path, canny_dataset: Path, tmp_path: Path) -> None:
    """torchrun (what accelerate launch runs) with 2 CPU processes of batch 1 trains on the same
    global batches as one process of batch 2."""
    import socket

    with socket.socket() as probe:  # a free port for the process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        "-m", "cli.train", "--base-model", str(tiny_base), "--dataset", str(canny_dataset), "-o", str(out),
        "--resolution", "32", "--batch-size", "1", "--max-steps", "4", "--checkpointing-steps", "4",
        "--validation-steps", "0", "--report-to", "none", "--log-samples", "--seed", "5",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    run = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # one log, written by the main process
    single = iter(EpochBatchSampler(8, 2, seed=5, rank=0, world_size=1))
    expected = [[f"{row:05d}.png" for _, row in next(single)] for _ in range(4)]
    assert [r["ids"] for r in records] == expected
    assert sorted(p.name for p in (out / "checkpoint-4").glob("data_rng_*.pt")) == ["data_rng_0.pt", "data_rng_1.pt"]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert (out / "controlnet" / "config.json").is_file()


def test_streamed_batches_resume_at_their_position(canny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from controlnet.training.data import stream_batches

    # datasets pauses 5 s at the end of each shuffled pass (a pyarrow thread workaround); this test
    # makes many short passes.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)

    def batches(start: Position, count: int) -> list[tuple[list[str], Position]]:
        rows = load_rows(str(canny_dataset), streaming=True)
        stream = stream_batches(rows, PairTransform(32), Columns(), 0.5, seed=1, batch_size=3, rank=0,
                                world_size=1, start=start, shuffle_buffer=4)
        return [(batch["sample_ids"] + batch["captions"], position) for batch, position in (next(stream) for _ in range(count))]

    run = batches(Position(), 5)  # 8 rows in batches of 3: 2 batches per epoch, 2 rows left over
    assert [p for _, p in run] == [Position(0, 1), Position(0, 2), Position(1, 1), Position(1, 2), Position(2, 1)]
    assert run[0][0][:3] != run[2][0][:3]  # the shuffle differs between epochs
    assert batches(run[0][1], 4) == run[1:]
    assert batches(run[2][1], 2) == run[3:]


def test_streaming_training_runs(tiny_base: Path, canny_dataset: Path, tmp_path: Path) -> None:
    from controlnet.training.trainer import train

    result = train(
        TrainConfig(
            base_model=str(tiny_base), dataset=str(canny_dataset), output_dir=str(tmp_path), resolution=32,
            train_batch_size=2, max_steps=2, streaming=True, shuffle_buffer=4, checkpointing_steps=0,
            validation_steps=2, validation_inference_steps=1, num_validation_images=1, report_to=None,
        )
    )
    assert result.global_step == 2 and np.isfinite(result.losses).all()
    assert np.asarray(Image.open(tmp_path / "validation" / "step-000002.png")).shape == (2 * 32, 2 * 32, 3)
