"""The fill50k experiment (experiments/fill50k) at tiny sizes: every step runs, results and figures
are written, and step 0 of a zero-initialised ControlNet is the base model bit for bit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from experiments.fill50k import data
from experiments.fill50k.report import jump_step, key_steps, largest_rise
from experiments.fill50k.run import ABLATIONS, PRESETS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from experiments.fill50k.run import run_experiment

    folder = tmp_path_factory.mktemp("fill50k")
    return folder, run_experiment("tiny", folder / "work", folder / "report")


def test_every_result_is_written(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    folder, results = tiny_run
    report = folder / "report"
    assert json.loads((report / "results.json").read_text())["preset"] == "tiny"
    for figure in ("curves.png", "samples.png"):
        assert min(Image.open(report / figure).size) > 100
    table = (report / "table.md").read_text()
    assert all(f"| {ablation.name} | edge F1 |" in table for ablation in ABLATIONS)
    # The datasets were built by cn-annotate with the canny annotator.
    for split in ("train", "val"):
        assert "canny" in json.loads((folder / "work" / "datasets" / split / "build.json").read_text())["annotators"]


def test_each_run_is_scored_at_every_step(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = tiny_run
    preset = PRESETS["tiny"]
    assert set(results["runs"]) == {a.name for a in ABLATIONS}
    for run in results["runs"].values():
        curve = run["curve"]
        assert curve["step"] == list(range(0, preset.steps + 1, preset.eval_every))
        assert len(run["losses"]) == preset.steps and np.isfinite(run["losses"]).all()
        for metric in ("f1", "iou"):
            assert all(0.0 <= value <= 1.0 for value in curve[metric])
        assert 0.0 <= run["final_empty_prompt_f1"] <= 1.0
    assert 0.0 <= results["base"]["samples"]["colour"]["both"] <= 1.0


def test_step_zero_is_the_base_model_only_with_zero_convolutions(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = tiny_run
    runs = results["runs"]
    assert runs["zero-init"]["step0"]["identical"] and runs["no-empty-prompts"]["step0"]["identical"]
    assert runs["zero-init"]["step0"]["samples"] == PRESETS["tiny"].val_conditions
    assert not runs["gaussian-init"]["step0"]["identical"]
    assert runs["gaussian-init"]["step0"]["max_abs_difference"] > 0


def test_training_in_segments_equals_one_run(tiny_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """The experiment trains in resumed segments to sample every step; one uninterrupted run of the
    same configuration has the same losses."""
    from controlnet.training.trainer import TrainConfig, train

    folder, results = tiny_run
    config = TrainConfig(**json.loads((folder / "work" / "runs" / "zero-init" / "train" / "cn_train_config.json").read_text()))
    config.output_dir, config.resume = str(tmp_path), None
    assert train(config).losses == pytest.approx(results["runs"]["zero-init"]["losses"], rel=1e-6)


def test_the_cpu_and_gpu_presets_evaluate_the_quarter_steps() -> None:
    for name in ("cpu", "gpu"):
        preset = PRESETS[name]
        steps = list(range(0, preset.steps + 1, preset.eval_every))
        assert key_steps(steps) == [round(f * preset.steps) for f in (0, 0.25, 0.5, 0.75, 1)], name


def test_circle_scores_of_drawn_circles() -> None:
    circle = data.Circle("a.png", "a red circle on a blue background", "blue", "red", 30, 34, 12)
    image = data.draw(circle, 64)
    assert data.circle_iou(image, circle) == 1.0
    assert data.drawn_colours(image) == ("blue", "red")
    moved = data.draw(data.Circle("b.png", "", "blue", "red", 40, 34, 12), 64)
    assert 0.2 < data.circle_iou(moved, circle) < 0.6
    assert data.drawn_colours(data.draw(data.Circle("c.png", "", "green", "yellow", 32, 32, 0), 64)) == ("green", None)


def test_jump_and_largest_rise() -> None:
    steps = [0, 100, 200, 300, 400]
    sudden = [0.10, 0.12, 0.15, 0.60, 0.65]
    assert jump_step(steps, sudden) == 300
    start, end, share = largest_rise(steps, sudden)
    assert (start, end) == (200, 300) and share == pytest.approx(0.45 / 0.55)
    assert jump_step(steps, [0.3, 0.32, 0.31, 0.33, 0.35]) is None  # a rise under 0.1 is no jump
    assert key_steps([0, 1, 2]) == [0, 0, 1, 1, 2]


def test_a_rerun_reuses_the_base_and_takes_other_steps_and_rates(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    from experiments.fill50k.run import ABLATIONS, run_experiment

    folder, first = tiny_run
    weights = folder / "work" / "base" / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    again = run_experiment(
        "tiny", folder / "work", folder / "report-again", ablations=[ABLATIONS[0]], overrides={"steps": 4, "eval_every": 2, "learning_rate": 1e-3}, reuse_base=True
    )
    assert weights.stat().st_mtime_ns == before  # not trained again
    assert again["reused_base"] and again["base"]["log"] == first["base"]["log"]
    assert list(again["runs"]) == ["zero-init"] and again["runs"]["zero-init"]["curve"]["step"] == [0, 2, 4]
    assert again["settings"]["learning_rate"] == 1e-3 and again["overrides"]["steps"] == 4


def test_the_probe_measures_how_much_the_residuals_depend_on_the_condition(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    from experiments.fill50k.probe import condition_share

    folder, results = tiny_run
    for name, run in results["runs"].items():
        probe = run["probe"]
        assert probe["residual"] > 0 and 0 <= probe["condition_change"], name
        assert probe["condition_share"] == pytest.approx(probe["condition_change"] / probe["residual"])
    # The initial zero-initialised ControlNet adds nothing at all, with or without its condition.
    work = folder / "work"
    assert condition_share(work / "runs" / "zero-init" / "initial" / "controlnet", work / "base", work / "datasets" / "val") == {
        "residual": 0.0, "condition_change": 0.0, "condition_share": 0.0
    }
