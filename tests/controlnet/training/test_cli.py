"""`cn-train` and `cn-sample` command lines: generated from their configs, refusals before anything loads."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from annotators.base import described_fields
from cli.options import option_name
from cli.train import FLAGS, train_app
from controlnet.sample import ControlNetSpec, SampleConfig
from controlnet.training.trainer import TrainConfig


def _options(app: typer.Typer) -> dict[str, str]:
    """Each option name of ``app``'s command -> its help."""
    command = typer.main.get_command(app)
    return {name: param.help for param in command.params for name in param.opts}


@pytest.mark.parametrize(("module", "configs"), [("cli.train", (TrainConfig,)), ("cli.sample", (SampleConfig, ControlNetSpec))])
def test_every_config_field_is_an_option_with_the_fields_help(module: str, configs: tuple[type, ...]) -> None:
    import importlib

    cli = importlib.import_module(module)
    options = _options(cli.train_app if module == "cli.train" else cli.app)
    for config in configs:
        fields = described_fields(config)
        assert fields, config
        for field, _ in fields:
            names = cli.FLAGS.get(field.name, (option_name(field.name),))
            assert options[names[0]].startswith(field.metadata["help"]), field.name
    # The options not written by hand: TrainConfig has no field the command line misses.
    declared = {f.name for f in dataclasses.fields(TrainConfig)}
    assert declared == {f.name for f, _ in described_fields(TrainConfig)}
    assert "--batch-size" in _options(train_app) and "-o" in _options(train_app) and FLAGS


def _train(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(train_app, list(args))
    return result.exit_code, result.output


@pytest.fixture()
def notices(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="controlnet")
    return caplog


def _common(base: Path, dataset: Path, out: Path) -> list[str]:
    return ["--base-model", str(base), "--dataset", str(dataset), "-o", str(out), "--resolution", "32", "--batch-size", "2",
            "--validation-steps", "0", "--report-to", "none"]


@pytest.mark.parametrize("option", ["--conditioning-column", "--caption-column"])
def test_a_wrong_column_is_one_line_before_any_model_loads(option: str, tiny_sdxl_base: Path, canny_dataset: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controlnet.bases import BaseModel

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model loaded before the columns were checked")

    monkeypatch.setattr(BaseModel, "load_text", must_not_load)
    code, output = _train(*_common(tiny_sdxl_base, canny_dataset, tmp_path / "run"), option, "depth")
    assert code == 1
    # One line of error, no traceback (datasets may first show its one-time "Generating train split" bar).
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no" in errors[0] and "'depth'" in errors[0] and output.rstrip().endswith(errors[0])


def test_a_used_output_folder_is_refused_unless_overwrite_or_resume(tiny_base: Path, fixed_batch_dataset: Path,
                                                                   tmp_path: Path, notices) -> None:
    out = tmp_path / "run"
    common = [*_common(tiny_base, fixed_batch_dataset, out), "--checkpointing-steps", "1"]
    code, output = _train(*common, "--max-steps", "2", "--resume", "latest")
    assert code == 0, output
    assert f"no checkpoint in {out} to resume from: starting fresh" in notices.messages
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    code, output = _train(*common, "--max-steps", "2")
    assert code == 1 and "already holds a cn-train run" in output and "--overwrite" in output
    assert (out / "checkpoint-2").is_dir()  # nothing was touched

    notices.clear()
    code, output = _train(*common, "--max-steps", "3", "--resume", "latest")
    assert code == 0, output
    assert f"resuming from {out / 'checkpoint-2'}" in notices.messages and "resumed at step 2" in notices.messages

    code, output = _train(*common, "--max-steps", "1", "--overwrite", "--checkpointing-steps", "0")
    assert code == 0, output
    assert not list(out.glob("checkpoint-*"))  # the earlier run's checkpoints went with it
    assert (out / "controlnet" / "config.json").is_file()
    # A finished run without checkpoints: "--resume latest" has nothing to resume and would replace it.
    code, output = _train(*common, "--max-steps", "1", "--resume", "latest")
    assert code == 1 and "already holds a cn-train run: pass --overwrite" in output


@pytest.mark.parametrize("app_name", ["cli.train:train_app", "cli.train:export_app", "cli.sample:app"])
def test_help_fits_80_columns_with_every_option_whole(app_name: str) -> None:
    import importlib
    import re

    module, name = app_name.split(":")
    app = getattr(importlib.import_module(module), name)
    text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"}).output
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text and "<bool>" not in text
    for param in typer.main.get_command(app).params:
        for option in (*param.opts, *param.secondary_opts):
            if option.startswith("--"):
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option
