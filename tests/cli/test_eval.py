"""End to end on a tiny pipeline: cn-train (with --eval-every) -> cn-sample --dataset -> cn-eval, and
cn-sample on a condition image -> cn-eval with no dataset, all through the command lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import annotators
from controlnet.evaluation.measures import fit_to
from controlnet.evaluation.metrics import edge_f1
from controlnet.manifest import read_manifest
from controlnet.testing import build_tiny_pipeline, write_dataset

CAPTIONS = ["an astronaut", "a cup of coffee", "a cat", "a man with a camera"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    images = [np.asarray(Image.fromarray(p).resize((48, 40), Image.Resampling.BILINEAR)) for p in photos]
    return write_dataset(tmp_path_factory.mktemp("canny-ds"), images, CAPTIONS)


@pytest.fixture(scope="module")
def trained(tiny_base: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cli.train import train_app

    run = tmp_path_factory.mktemp("run")
    args = [
        "--base-model", str(tiny_base), "--dataset", str(dataset), "-o", str(run), "--resolution", "32",
        "--batch-size", "2", "--max-steps", "4", "--learning-rate", "1e-3", "--checkpointing-steps", "0",
        "--validation-steps", "0", "--eval-every", "2", "--validation-inference-steps", "2",
        "--num-validation-images", "1",
    ]
    result = CliRunner().invoke(train_app, args)
    assert result.exit_code == 0, result.output
    return run


def test_eval_every_logs_condition_following_next_to_the_loss(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = next((trained / "logs").rglob("events.out.tfevents.*")).parent
    events = EventAccumulator(str(logs))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss", "eval/f1", "eval/precision", "eval/recall"} <= set(tags)
    f1 = events.Scalars("eval/f1")
    assert [e.step for e in f1] == [0, 2, 4]
    assert all(0.0 <= e.value <= 1.0 for e in f1)


def test_sample_a_dataset_then_evaluate(trained: Path, tiny_base: Path, dataset: Path, tmp_path: Path) -> None:
    from cli.eval import app as eval_app
    from cli.sample import app as sample_app

    samples = tmp_path / "samples"
    args = [
        "--base-model", str(tiny_base), "--controlnet", str(trained / "controlnet"), "--dataset", str(dataset),
        "--split", "train", "--limit", "3", "--steps", "2", "--seed", "5", "--guidance", "3.0", "-o", str(samples),
    ]
    result = CliRunner().invoke(sample_app, args)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(samples)
    assert manifest is not None and [e.sample for e in manifest] == ["00000.png", "00001.png", "00002.png"]
    assert [e.seed for e in manifest] == [5, 6, 7] and [e.prompt for e in manifest] == CAPTIONS[:3]
    assert all(e.guidance == 3.0 and e.steps == 2 and e.row == i for i, e in enumerate(manifest))
    assert manifest[0].conditions[0].annotator == "canny" and manifest[0].conditions[0].column == "conditioning_image"

    report_path = tmp_path / "report" / "eval.json"
    result = CliRunner().invoke(eval_app, ["--samples", str(samples), "--output", str(report_path), "--bootstrap", "200", "--worst", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["format"] == 1 and report["dataset"] == dataset.name and report["split"] == "train"
    assert report["annotator"]["id"] == "canny" and report["annotator"]["params_from"] == "build.json"
    assert report["counts"] == {"samples": 3, "scored": 3, "skipped": 0}
    assert set(report["metrics"]) == {"f1", "precision", "recall"}
    f1 = report["metrics"]["f1"]
    assert f1["n"] == 3 and len(f1["ci"]) == 2 and f1["ci"][0] <= f1["mean"] <= f1["ci"][1]
    assert report["bootstrap"] == {"resamples": 200, "confidence": 0.95, "seed": 0, "method": "percentile"}
    assert [r["seed"] for r in report["per_sample"]] == [5, 6, 7] and report["per_sample"][0]["guidance"] == 3.0
    assert len(report["worst"]) == 2 and (report_path.parent / "eval-worst.png").is_file()
    assert "| f1 |" in (report_path.parent / "eval.md").read_text()
    # The values are canny F1s of the samples against the dataset's maps, and their mean.
    import datasets

    rows = datasets.load_dataset(str(dataset), split="train")
    values = []
    for record in report["per_sample"]:
        condition = np.asarray(rows[record["row"]]["conditioning_image"])
        sample = fit_to(np.asarray(Image.open(samples / record["sample"]).convert("RGB")), *condition.shape)
        values.append(edge_f1(condition, annotators.create("canny")([sample])[0])["f1"])
        assert record["scores"]["f1"] == pytest.approx(values[-1])
    assert f1["mean"] == pytest.approx(np.mean(values))


def test_sample_an_image_then_evaluate_without_a_dataset(trained: Path, tiny_base: Path, astronaut: np.ndarray, tmp_path: Path) -> None:
    from cli.eval import app as eval_app
    from cli.sample import app as sample_app

    photo = tmp_path / "photo.png"
    Image.fromarray(astronaut[::8, ::8]).save(photo)
    samples = tmp_path / "samples"
    args = [
        "--base-model", str(tiny_base), "--controlnet", str(trained / "controlnet"), "--image", str(photo),
        "--annotator", "canny", "--steps", "2", "--batch", "2", "-o", str(samples),
    ]
    result = CliRunner().invoke(sample_app, args)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(samples)
    assert manifest is not None and [e.index for e in manifest] == [0, 1]
    condition = manifest[0].conditions[0]
    assert condition.image == "condition-0.png" and condition.params == {"low_threshold": 100, "high_threshold": 200}

    result = CliRunner().invoke(eval_app, ["--samples", str(samples), "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dataset"] is None and report["annotator"]["params_from"] == "manifest"
    assert report["metrics"]["f1"]["n"] == 2


def test_eval_errors_are_one_line(tmp_path: Path) -> None:
    from cli.eval import app as eval_app

    (tmp_path / "s").mkdir()
    result = CliRunner().invoke(eval_app, ["--samples", str(tmp_path / "s"), "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 1
    assert "no manifest.jsonl; give --dataset" in result.output and len(result.output.strip().splitlines()) <= 2
    result = CliRunner().invoke(eval_app, ["--samples", str(tmp_path / "s"), "-o", str(tmp_path / "r.json"), "--confidence", "1.5"])
    assert result.exit_code == 2 and "confidence" in result.output


def test_eval_every_refuses_conditions_it_cannot_pair_with_rows() -> None:
    from controlnet.training.trainer import TrainConfig, TrainError

    with pytest.raises(TrainError, match="eval_every"):
        TrainConfig(base_model="base", dataset="ds", eval_every=2, validation_conditions=["edges.png"])
