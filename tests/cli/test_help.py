"""`cn-annotate` for scripts and for 80 columns: `list` never cuts an id when piped and has `--json`;
every help text fits 80 columns with whole option names and conventional metavars."""

from __future__ import annotations

import json
import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import annotators
from cli.annotate import app

runner = CliRunner()


def test_piped_list_is_one_whole_line_per_annotator() -> None:
    result = runner.invoke(app, ["list"], env={"COLUMNS": "80"})  # CliRunner's output is not a terminal
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == annotators.names()
    assert "…" not in result.output
    by_name = {line.split()[0]: line for line in lines}
    assert "none needed" in by_name["canny"] and "Canny edges" in by_name["canny"]
    assert "[MIT (isl-org/MiDaS)]" in by_name["depth_midas"]


def test_list_json_gives_the_same_data() -> None:
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.output)
    infos = annotators.available()
    assert [entry["name"] for entry in entries] == [info.name for info in infos]
    for entry, info in zip(entries, infos):
        assert (entry["description"], entry["needs_weights"], entry["weights_license"], entry["data_kind"], entry["source"]) == (
            info.description, info.needs_weights, info.weights_license, info.data_kind, info.source)
        assert entry["weights"] in ({"present", "missing"} if info.needs_weights else {"bundled", "none needed"})


def _help(*args: str, columns: int = 80) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", [(), ("list",), ("push",), *[(name,) for name in annotators.names()], ("canny,openpose",)])
def test_help_fits_80_columns_with_whole_names_and_plain_metavars(command: tuple[str, ...]) -> None:
    text = _help(*command)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    assert not re.search(r"\{[A-Z_]+\}", text), "typer's {ARGUMENT} in the usage line"
    assert "<bool>" not in text and "[default: (" not in text
    click_command = get_command(app).get_command(None, command[0]) if command else get_command(app)  # type: ignore[arg-type]
    for param in click_command.params:
        for name in (*param.opts, *param.secondary_opts):
            if name.startswith("--"):
                assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{name} is cut or missing"


def test_help_shows_defaults_ranges_and_the_input_argument() -> None:
    text = _help("canny", columns=200)
    assert "Usage:" in text and "[OPTIONS] INPUT" in text
    assert "(0 to 1020) [default: 100]" in text
    assert "--keep-size " in text and "--no-keep-size" not in text  # a flag that is off by default needs no negative
    assert re.search(r"--image-format\s+<choice>", text) and "one of auto, jpeg, png, webp" in text
