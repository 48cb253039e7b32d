"""An annotator from outside the package, with a kind of data the package has never heard of (a list
of boxes), builds a dataset through ``register`` and through an entry point, with no change to the
builder, the card or the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.parity import REPO_ROOT

PLUGIN_MODULE = '''
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from annotators import AnnotatorConfig, param
from annotators.base import Annotation, Annotator
from annotators.data import JsonDataKind


@dataclass(frozen=True)
class BoxFilters(AnnotatorConfig):
    min_boxes: int = param(0, "skip images with fewer boxes than this", ge=0)


class BoxesKind(JsonDataKind):
    """A list of [x, y, width, height] boxes."""

    name = "boxes"
    column = "boxes"
    description = "bright boxes as [x, y, width, height]"
    Filters = BoxFilters

    def reject(self, data, filters):
        if isinstance(filters, BoxFilters) and len(data) < filters.min_boxes:
            return f"{len(data)} boxes found, fewer than --min-boxes {filters.min_boxes}"
        return None

    def tally(self, data):
        return Counter({"boxes": len(data)})

    def card_lines(self, totals, rows):
        return [f"- Boxes found: {totals['boxes']}"]


@dataclass(frozen=True)
class BoxConfig(AnnotatorConfig):
    threshold: int = param(200, "a pixel is bright above this grey level", ge=0, le=255)


class BoxFinder(Annotator):
    name = "box_finder"
    description = "Third-party test plug-in: bounding boxes of bright regions"
    Config = BoxConfig
    data_kind = BoxesKind()

    def _annotate(self, images):
        results = []
        for image in images:
            bright = (image.min(axis=2) > self.config.threshold).astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
            boxes = [[int(v) for v in stats[i, :4]] for i in range(1, count)]
            results.append(Annotation(bright * 255, boxes))
        return results
'''


def _install_plugin(site: Path) -> None:
    """The module plus a dist-info declaring the entry point, as pip lays a distribution out."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "cn_boxes_plugin.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    dist_info = site / "cn_boxes_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: cn-boxes-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[cn_annotate.annotators]\nbox_finder = cn_boxes_plugin:BoxFinder\n")
    (dist_info / "RECORD").write_text("")


def _write_images(folder: Path) -> dict[str, list[list[int]]]:
    """Black images with white rectangles; returns the boxes each holds, worked out by hand."""
    folder.mkdir()
    layouts = {
        "none.png": [],
        "one.png": [[4, 6, 10, 8]],
        "two.png": [[2, 2, 5, 5], [20, 30, 12, 6]],
    }
    for name, boxes in layouts.items():
        pixels = np.zeros((48, 64, 3), np.uint8)
        for x, y, w, h in boxes:
            pixels[y : y + h, x : x + w] = 255
        Image.fromarray(pixels).save(folder / name)
    return layouts


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    _install_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_registered_annotator_with_a_new_kind_builds_and_loads(tmp_path: Path, plugin_site: Path, registered) -> None:
    import datasets

    import annotators
    from controlnet.dataset.build import BuildConfig, build

    registered("box_finder", "cn_boxes_plugin:BoxFinder")
    expected = _write_images(tmp_path / "images")
    cls = annotators.get_class("box_finder")
    filters = cls.data_kind.Filters(min_boxes=1)
    config = BuildConfig(input=str(tmp_path / "images"), output=tmp_path / "ds", annotators=(("box_finder", cls.Config()),), filters=(filters,), keep_size=True, workers=1)
    result = build(config)
    assert (result.rows, result.skip_kinds) == (2, {"other": 1})

    rows = datasets.load_dataset(str(tmp_path / "ds"), split="train")
    assert rows.features["boxes"] == datasets.Value("string")
    stored = {row["file_name"]: json.loads(row["boxes"]) for row in rows}
    assert stored == {name: boxes for name, boxes in expected.items() if boxes}
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "- Boxes found: 3" in card and "bright boxes as [x, y, width, height]" in card
    skipped = [json.loads(line) for line in (tmp_path / "ds" / "skipped.jsonl").read_text().splitlines()]
    assert [(s["file_name"], s["reason"]) for s in skipped] == [("none.png", "0 boxes found, fewer than --min-boxes 1")]


def test_entry_point_annotator_with_a_new_kind_builds_from_the_cli(tmp_path: Path, plugin_site: Path) -> None:
    expected = _write_images(tmp_path / "images")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO_ROOT)]), "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.annotate", *args], env=env, capture_output=True, text=True, cwd=REPO_ROOT)

    assert "--min-boxes" in cli("box_finder", "--help").stdout
    assert "--min-keypoints" not in cli("box_finder", "--help").stdout
    run = cli("box_finder", str(tmp_path / "images"), "-o", str(tmp_path / "ds"), "--keep-size", "--workers", "1", "--min-boxes", "2")
    assert run.returncode == 0, run.stderr

    import pyarrow.parquet as pq

    from controlnet.dataset.layout import shard_paths

    table = pq.read_table(shard_paths(tmp_path / "ds")[0], columns=["file_name", "boxes"]).to_pylist()
    assert [(r["file_name"], json.loads(r["boxes"])) for r in table] == [("two.png", expected["two.png"])]
