"""SDXL end to end on a cn-annotate dataset: loss, size conditioning, resume, caches, export, sampling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from controlnet.training.trainer import TrainConfig, train
from tests.controlnet.helpers import logged_steps

REPO = Path(__file__).resolve().parents[3]


def test_loss_falls_on_a_fixed_batch(sdxl_short_run) -> None:
    losses = np.array(sdxl_short_run.losses)
    assert sdxl_short_run.global_step == 60 and np.isfinite(losses).all()
    first, last = losses[:10].mean(), losses[-10:].mean()
    assert last < 0.9 * first, (first, last)


def test_controlnet_is_sdxl_shaped_and_validation_samples_the_same_way(sdxl_short_run, tiny_sdxl_base: Path) -> None:
    from diffusers import ControlNetModel, UNet2DConditionModel

    controlnet = ControlNetModel.from_pretrained(sdxl_short_run.controlnet_dir)
    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl_base, subfolder="unet")
    # from_unet on the SDXL UNet: the pooled-text and size embedding is copied, then trained along.
    assert controlnet.config.addition_embed_type == "text_time"
    assert controlnet.add_embedding.linear_1.weight.shape == unet.add_embedding.linear_1.weight.shape
    assert float(controlnet.controlnet_mid_block.weight.detach().abs().max()) > 0
    grids = sorted((sdxl_short_run.output_dir / "validation").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-000000.png", "step-000060.png"]
    assert np.asarray(Image.open(grids[-1])).shape == (2 * 32, 3 * 32, 3)


def _expected_time_ids(dataset: Path, resolution: int) -> dict[str, list[float]]:
    """(original h, w, crop top, left, target h, w) of each row's centre crop, computed from the
    stored images themselves."""
    from controlnet.training.data import decode, load_rows, undecoded

    rows = undecoded(load_rows(str(dataset)), ["image"])
    expected = {}
    for row in rows:
        height, width = decode(row["image"], "image").shape[:2]
        scale = resolution / min(width, height)
        resized_w, resized_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
        top, left = (resized_h - resolution) // 2, (resized_w - resolution) // 2
        expected[row["file_name"]] = [height, width, top, left, resolution, resolution]
    return expected


def test_time_ids_carry_the_real_crop_coordinates(tiny_sdxl_base: Path, canny_dataset: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import UNet2DConditionModel

    seen: list[torch.Tensor] = []
    forward = UNet2DConditionModel.forward

    def recording(self, *args, **kwargs):  # what the UNet is given, step by step
        seen.append(kwargs["added_cond_kwargs"]["time_ids"].detach().clone())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", recording)
    train(TrainConfig(
        base_model=str(tiny_sdxl_base), dataset=str(canny_dataset), output_dir=str(tmp_path), resolution=32,
        train_batch_size=2, max_steps=3, checkpointing_steps=0, validation_steps=0, report_to=None, log_samples=True,
    ))
    ids = [i for line in (tmp_path / "samples.jsonl").read_text().splitlines() for i in json.loads(line)["ids"]]
    given = torch.cat(seen).tolist()
    expected = _expected_time_ids(canny_dataset, 32)
    assert given == [expected[i] for i in ids]
    assert any(t[2] or t[3] for t in given)  # some crops are off the corner: the coordinates are not all 0


def test_kill_9_and_resume_with_cached_latents_and_embeddings_is_exact(tiny_sdxl_base: Path, canny_dataset: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "cli.train", "--base-model", str(tiny_sdxl_base), "--dataset", str(canny_dataset),
        "-o", str(out), "--resolution", "32", "--batch-size", "2", "--max-steps", "8", "--learning-rate", "1e-3",
        "--checkpointing-steps", "3", "--validation-steps", "0", "--report-to", "none", "--log-samples",
        "--seed", "7", "--resume", "latest", "--lr-scheduler", "linear", "--cache-latents", "--cache-text-embeddings",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = out / "samples.jsonl"
    err_path = tmp_path / "first.err"
    with err_path.open("w") as stderr:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        killed = False
        while time.monotonic() < deadline and first.poll() is None:
            steps = sorted(logged_steps(log)[0]) if log.exists() else []
            if (out / "checkpoint-3").is_dir() and steps and steps[-1] >= 4 and steps[-1] % 3:
                first.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.05)
        first.wait()
    first_err = err_path.read_text()
    assert killed, first_err[-2000:]
    assert "starting fresh" in first_err and "cached the latents of 8 images" in first_err
    manifest = out / "cache" / "latents" / "manifest.json"
    written = manifest.stat().st_mtime_ns

    second = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from" in second.stderr and "checkpoint-" in second.stderr
    assert "reusing the latents of 8 images" in second.stderr and "reusing the embeddings" in second.stderr
    assert manifest.stat().st_mtime_ns == written
    assert "torchvision" not in second.stderr and "Warning" not in second.stderr  # quiet runs
    final, replayed = logged_steps(log)
    assert sorted(final) == list(range(1, 9))
    assert replayed, "the kill must have happened after a step that no checkpoint covered"
    for before, after in replayed:
        assert before["ids"] == after["ids"] and after["lr"] == before["lr"]
        assert after["loss"] == pytest.approx(before["loss"], rel=1e-6, abs=1e-7)


def test_cached_run_equals_uncached_run(tiny_sdxl_base: Path, canny_dataset: Path, tmp_path: Path) -> None:
    from diffusers import ControlNetModel

    def run(name: str, cached: bool):
        return train(TrainConfig(
            base_model=str(tiny_sdxl_base), dataset=str(canny_dataset), output_dir=str(tmp_path / name),
            resolution=32, train_batch_size=2, max_steps=4, learning_rate=1e-3, seed=3, checkpointing_steps=0,
            validation_steps=0, report_to=None, cache_latents=cached, cache_text_embeddings=cached,
        ))

    plain, cached = run("plain", False), run("cached", True)
    assert (tmp_path / "cached" / "cache" / "latents" / "manifest.json").is_file()
    assert not (tmp_path / "plain" / "cache").exists()
    np.testing.assert_allclose(cached.losses, plain.losses, rtol=1e-4)
    a = ControlNetModel.from_pretrained(plain.controlnet_dir).state_dict()
    b = ControlNetModel.from_pretrained(cached.controlnet_dir).state_dict()
    # Adam moves a weight by about the learning rate per step whatever its gradient's size, so float
    # noise in a tiny gradient shows in the weights: they agree to a tenth of one step's move.
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_zeroed_empty_prompts_feed_zeros(tiny_sdxl_base: Path) -> None:
    from controlnet.bases import load_base

    base = load_base(str(tiny_sdxl_base))
    prompt = base.family.encode(base.load_text(torch.float32), ["a cat", ""], "cpu")
    assert float(prompt.hidden[1].abs().max()) > 0  # the encoded empty prompt is not zero ...
    zeroed = prompt.select(torch.tensor([True, False]))
    assert float(zeroed.hidden[1].abs().max()) == 0 and float(zeroed.pooled[1].abs().max()) == 0  # ... SDXL's is
    assert torch.equal(zeroed.hidden[0], prompt.hidden[0]) and torch.equal(zeroed.pooled[0], prompt.pooled[0])


def test_export_writes_the_diffusers_layout_and_round_trips(sdxl_short_run, tmp_path: Path) -> None:
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors.torch import load_file

    from cli.train import export_app
    from controlnet.training.export import PREFIX, load_controlnet_file

    trained = ControlNetModel.from_pretrained(sdxl_short_run.controlnet_dir).state_dict()
    target = tmp_path / "control_sdxl.safetensors"
    result = CliRunner().invoke(export_app, [str(sdxl_short_run.controlnet_dir), str(target)])
    assert result.exit_code == 0, result.output
    written = load_file(str(target))
    # The model's own keys, which ComfyUI and A1111 detect by controlnet_cond_embedding.conv_in.weight,
    # and in which diffusers' single-file loader recognises an SDXL ControlNet.
    assert set(written) == set(trained) and "controlnet_cond_embedding.conv_in.weight" in written
    assert infer_diffusers_model_type(written).startswith("controlnet_xl")
    assert all(torch.equal(written[k], trained[k]) for k in trained)
    back = load_controlnet_file(target).state_dict()
    assert all(torch.equal(back[k], trained[k]) for k in trained)

    original = tmp_path / "control_sdxl_original.safetensors"
    assert CliRunner().invoke(export_app, [str(sdxl_short_run.controlnet_dir), str(original), "--layout", "original"]).exit_code == 0
    keys = set(load_file(str(original)))
    assert all(k.startswith(PREFIX) for k in keys) and f"{PREFIX}label_emb.0.0.weight" in keys
    back = load_controlnet_file(original).state_dict()
    assert set(back) == set(trained) and all(torch.equal(back[k], trained[k]) for k in trained)


@pytest.mark.filterwarnings("error::FutureWarning")
def test_sampler_with_one_controlnet(sdxl_short_run, tiny_sdxl_base: Path, tmp_path: Path) -> None:
    from controlnet.sample import ControlNetSpec, SampleConfig, sample

    condition = tmp_path / "edges.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(condition)
    config = SampleConfig(
        base_model=str(tiny_sdxl_base), controlnets=[ControlNetSpec(str(sdxl_short_run.controlnet_dir))],
        images=[str(condition)], prompt="a cat", steps=2, batch=2, output_dir=str(tmp_path / "out"),
    )
    result = sample(config)
    assert len(result.images) == 2 and all(i.shape == (48, 64, 3) for i in result.images)
    np.testing.assert_array_equal(sample(config).images[1], result.images[1])  # same seed, same images


@pytest.mark.filterwarnings("error::FutureWarning")
def test_sampler_with_two_controlnets_and_guess_mode_from_the_cli(sdxl_short_run, tiny_sdxl_base: Path,
                                                                  tmp_path: Path) -> None:
    from cli.sample import app
    from cli.train import export_app

    exported = tmp_path / "control.safetensors"
    assert CliRunner().invoke(export_app, [str(sdxl_short_run.controlnet_dir), str(exported)]).exit_code == 0
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photo)
    args = [
        "--base-model", str(tiny_sdxl_base), "--image", str(photo),
        "--controlnet", str(sdxl_short_run.controlnet_dir), "--scale", "1.0", "--annotator", "canny",
        "--controlnet", str(exported), "--scale", "0.5", "--annotator", "none",
        "--steps", "2", "--guess-mode", "-o", str(tmp_path / "out"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "out" / "grid.png")).shape == (32, 3 * 32, 3)


def test_eval_every_scores_sdxl_validation_samples(tiny_sdxl_base: Path, canny_dataset: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(TrainConfig(
        base_model=str(tiny_sdxl_base), dataset=str(canny_dataset), output_dir=str(tmp_path), resolution=32,
        train_batch_size=2, max_steps=2, checkpointing_steps=0, validation_steps=0, eval_every=2,
        validation_inference_steps=2, num_validation_images=1, cache_text_embeddings=True,
    ))
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/f1")] == [0, 2]
    assert all(0.0 <= e.value <= 1.0 for e in events.Scalars("eval/f1"))
