"""`cn-annotate` list, per-annotator help, single-file mode, and plug-ins from entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from annotators.image import load_image
from cli.annotate import app
from tests.parity import REPO_ROOT

runner = CliRunner()


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()[:200, :300]).save(path)
    return path


def test_list_shows_every_annotator() -> None:
    result = runner.invoke(app, ["list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("canny", "scribble_xdog", "hough", "shuffle"):
        assert name in result.output
    assert "none needed" in result.output


def test_annotator_help_shows_parameters_and_defaults() -> None:
    result = runner.invoke(app, ["canny", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "--low-threshold" in result.output and "100" in result.output
    assert "--high-threshold" in result.output and "200" in result.output


def test_single_file_writes_map_at_reference_resolution(photo_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "edges.png"
    result = runner.invoke(app, ["canny", str(photo_file), "-o", str(out), "--low-threshold", "50"])
    assert result.exit_code == 0, result.output
    edges = load_image(out)
    assert edges.shape == (512, 768, 3)  # 200x300 -> short side 512, sides rounded to 64
    import cv2

    from annotators.image import resize_image

    expected = cv2.Canny(resize_image(load_image(photo_file), 512), 50, 200)
    np.testing.assert_array_equal(edges[:, :, 0], expected)


def test_keep_size(photo_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "inv.png"
    result = runner.invoke(app, ["invert", str(photo_file), "-o", str(out), "--keep-size"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_image(out), 255 - load_image(photo_file))


def test_bad_parameter_is_a_usage_error(photo_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["canny", str(photo_file), "-o", str(tmp_path / "x.png"), "--low-threshold", "300"])
    assert result.exit_code == 2
    assert "low_threshold" in result.output


def test_unknown_annotator_lists_available(photo_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["cany", str(photo_file), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert "unknown annotator 'cany'" in result.output and "canny" in result.output


def test_corrupt_file_gives_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = runner.invoke(app, ["canny", str(bad), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert str(bad) in result.output


PLUGIN_MODULE = '''
from dataclasses import dataclass

import numpy as np

from annotators import AnnotatorConfig, param
from annotators.base import PerImageAnnotator


@dataclass(frozen=True)
class HalfConfig(AnnotatorConfig):
    divisor: int = param(2, "divide every pixel by this", ge=1, le=255)


class Half(PerImageAnnotator):
    name = "half_brightness"
    description = "Third-party test plug-in: darker image"
    Config = HalfConfig

    def _map(self, image: np.ndarray) -> np.ndarray:
        return image // self.config.divisor
'''


def _install_plugin(site: Path) -> None:
    """Install a distribution the way pip lays it out: the module plus a dist-info declaring the entry point."""
    (site / "cn_half_plugin.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    dist_info = site / "cn_half_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: cn-half-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[cn_annotate.annotators]\nhalf_brightness = cn_half_plugin:Half\n")
    (dist_info / "RECORD").write_text("")


def test_entry_point_plugin_is_listed_and_runs_from_cli(photo_file: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)]), "COLUMNS": "250"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.annotate", *args], env=env, capture_output=True, text=True, cwd=REPO_ROOT)

    listing = cli("list")
    assert listing.returncode == 0, listing.stderr
    assert "half_brightness" in listing.stdout and "cn-half-plugin" in listing.stdout
    assert "--divisor" in cli("half_brightness", "--help").stdout
    out = tmp_path / "half.png"
    run = cli("half_brightness", str(photo_file), "-o", str(out), "--keep-size", "--divisor", "4")
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(load_image(out), load_image(photo_file) // 4)
    refused = cli("half_brightness", str(photo_file), "-o", str(out), "--divisor", "0")
    assert refused.returncode == 2 and "divisor" in refused.stderr


def test_list_shows_weights_presence(seeded_weights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(seeded_weights.ensure(("ControlNetHED.pth",)) / "ControlNetHED.pth", folder)
    monkeypatch.setenv("CN_ANNOTATE_WEIGHTS", str(folder))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {entry["name"]: entry for entry in json.loads(result.output)}
    assert rows["softedge_hed"]["weights"] == "present" and "Apache-2.0" in rows["softedge_hed"]["weights_license"]
    assert rows["hed"]["weights"] == "missing" and "GPL" in rows["hed"]["weights_license"]


def test_missing_weights_is_one_clear_line_offline(photo_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("CN_ANNOTATE_WEIGHTS", raising=False)
    result = runner.invoke(app, ["softedge_hed", str(photo_file), "-o", str(tmp_path / "x.png")], terminal_width=400)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "ControlNetHED.pth" in lines[0] and "CN_ANNOTATE_WEIGHTS" in lines[0] and "--weights" in lines[0]


@pytest.mark.parametrize(("preset", "expected"), [(None, "system"), ("mimalloc", "mimalloc")])
def test_builds_use_the_system_allocator_unless_told_otherwise(preset: str | None, expected: str) -> None:
    # The builder's Parquet writing is faster with it (docs/throughput.md); it must be chosen
    # before pyarrow is first imported, hence a fresh process, and a user's own choice is kept.
    env = {key: value for key, value in os.environ.items() if key != "ARROW_DEFAULT_MEMORY_POOL"}
    if preset is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = preset
    script = textwrap.dedent(
        """
        import sys
        import cli.annotate
        sys.argv = ["cn-annotate", "--help"]
        try:
            cli.annotate.main()
        except SystemExit:
            pass
        import pyarrow
        print("POOL", pyarrow.default_memory_pool().backend_name)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"POOL {expected}" in done.stdout.splitlines()
