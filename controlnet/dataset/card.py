"""The dataset card (``README.md``) of a built dataset, and a contact sheet for a quick look.

The card's YAML header carries the ``configs`` the Hub's viewer and ``load_dataset`` read; its
body records how the dataset was made (annotators, parameters, package versions), how many
images it holds and how many were skipped, and a few preview rows.

Text that comes from the inputs (captions, file names, the prompt, parameter values) is shown
bounded (:data:`CELL_CHARS`) and escaped: control characters (ESC, NUL) as ``\\xNN``, HTML as
entities, so that a hostile caption can neither bloat the card nor script the Hub's page.
"""

from __future__ import annotations

import html
import io
import json
import os
import platform
import unicodedata
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from annotators.base import AnnotatorConfig
from controlnet.dataset.layout import BUILD_FILE, CARD_FILE, Layout, shard_paths

__all__ = ["CardInfo", "contact_sheet", "package_versions", "write_card"]

_PACKAGES = ("cn-annotate", "numpy", "opencv-contrib-python", "pillow", "datasets", "pyarrow")


@dataclass(frozen=True)
class CardInfo:
    identity: dict[str, Any]
    layout: Layout
    rows: int
    skip_kinds: dict[str, int]
    tallies: dict[str, Counter[str]]  # per data column, the summed statistics of its kind
    filters: tuple[AnnotatorConfig, ...]
    preview: list[dict[str, Any]]
    versions: dict[str, str]
    data_bytes: int  # size of the finished shards

    @property
    def skipped(self) -> int:
        return sum(self.skip_kinds.values())


def package_versions(with_torch: bool = False) -> dict[str, str]:
    """Versions of the packages that determine the output."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES + (("torch",) if with_torch else ()):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _size_category(rows: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return label
    return "n>1M"


#: characters of input text shown in one place of the card; longer text is cut with an ellipsis
CELL_CHARS = 200
# Bidirectional overrides reorder the text around them (the "Trojan source" trick): shown escaped.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(char: str) -> str:
    if char in "\n\r\t":
        return " "
    if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS:
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def _cell(value: Any, limit: int = CELL_CHARS) -> str:
    """Input text made safe for a Markdown table cell (or line) of the card: bounded, control
    characters escaped, HTML escaped, table pipes escaped."""
    text = str(value)
    cut = len(text) > limit
    text = "".join(_visible(char) for char in text[:limit]) + ("…" if cut else "")
    return html.escape(text, quote=False).replace("|", "\\|")


def render_card(info: CardInfo) -> str:
    annotator_ids = list(info.layout.annotators)
    names = ", ".join(f"`{name}`" for name in annotator_ids)
    resolution = info.identity.get("resolution")
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/train-*",
        # datasets caches a local folder with YAML configs by its name and these numbers alone, not
        # by its files: without them a rebuilt or resumed folder would load stale rows from the cache.
        "dataset_info:",
        "  splits:",
        "  - name: train",
        f"    num_bytes: {info.data_bytes}",
        f"    num_examples: {info.rows}",
        f"  download_size: {info.data_bytes}",
        "tags:",
        "- controlnet",
        "- cn-annotate",
        "size_categories:",
        f"- {_size_category(info.rows)}",
        "---",
        "",
        f"# ControlNet training pairs: {names}",
        "",
        f"Made with cn-annotate: each image is paired with the condition map of {names}. "
        "The columns are the defaults of diffusers' `train_controlnet.py`, so it trains on this dataset as it is:",
        "",
        "```python",
        "from datasets import load_dataset",
        'dataset = load_dataset("path/or/repo-id", split="train")',
        "```",
        "",
        "## Columns",
        "",
        "| column | content |",
        "|---|---|",
    ]
    described = {
        "image": "the input image, resized like the reference `resize_image`"
        + (f" (short side {resolution}, sides multiples of 64)" if resolution else " (original size)")
        + "; when no resize was needed, the original file unchanged",
        "conditioning_image": f"the condition map of `{annotator_ids[0]}` (lossless PNG), same size as `image`",
        "text": "caption: sidecar `.txt`, then `metadata.jsonl`/`metadata.csv`, then the dataset's caption column, else the default prompt",
        "file_name": "the image's path relative to the input",
        "annotator": "the annotator id(s)",
        "width": "width of `image` and the maps",
        "height": "height of `image` and the maps",
    }
    described.update({c.name: f"{c.kind.description}, found by `{c.annotator}`" for c in info.layout.data_columns})
    for column in info.layout.columns:
        text = described.get(column, f"the condition map of `{column}` (lossless PNG)")
        lines.append(f"| `{column}` | {text} |")
    lines += [
        "",
        "## How it was made",
        "",
        "| annotator | parameters |",
        "|---|---|",
    ]
    for name, params in info.identity.get("annotators", {}).items():
        shown = ", ".join(f"{key}={value!r}" for key, value in params.items()) or "(none)"
        lines.append(f"| `{name}` | {_cell(shown, limit=4 * CELL_CHARS)} |")
    lines += [
        "",
        f"- Resolution: {f'{resolution} (reference `resize_image`)' if resolution else 'original sizes (--keep-size)'}",
        f"- Default prompt: \"{_cell(info.identity.get('prompt'))}\"",
    ]
    for column in info.layout.data_columns:
        for config in info.filters:
            if column.kind.Filters is not None and isinstance(config, column.kind.Filters):
                lines += column.kind.filter_lines(config)
    lines.append("- Packages: " + ", ".join(f"{name} {version}" for name, version in info.versions.items()))
    lines += [
        "",
        "## Contents",
        "",
        f"- Rows: {info.rows}",
        f"- Skipped inputs: {info.skipped}" + (" (" + ", ".join(f"{kind}: {count}" for kind, count in sorted(info.skip_kinds.items())) + ")" if info.skipped else "")
        + (" — listed with their reasons in `skipped.jsonl`" if info.skipped else ""),
    ]
    for column in info.layout.data_columns:
        lines += column.kind.card_lines(info.tallies.get(column.name, Counter()), info.rows)
    if info.preview:
        lines += ["", "## Preview", "", "| file_name | size | text |", "|---|---|---|"]
        for row in info.preview:
            lines.append(f"| {_cell(row['file_name'])} | {row['width']}x{row['height']} | {_cell(row['text'])} |")
    return "\n".join(lines) + "\n"


def write_card(output: Path, info: CardInfo) -> None:
    """Write ``output/README.md`` atomically."""
    tmp = output / f".{CARD_FILE}.tmp"
    tmp.write_text(render_card(info), encoding="utf-8")
    os.replace(tmp, output / CARD_FILE)


def contact_sheet(output: Path, destination: Path, rows: int = 8, height: int = 160) -> int:
    """A PNG of the first ``rows`` rows: the image, then each condition map, side by side.
    Returns the number of rows drawn."""
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    annotator_ids = list(json.loads((output / BUILD_FILE).read_text(encoding="utf-8"))["annotators"])
    columns = ["image", "conditioning_image"] if len(annotator_ids) == 1 else ["image", *annotator_ids]
    labels = ["image", *annotator_ids]
    tiles: list[list[Image.Image]] = []
    for path in shard_paths(output):
        table = pq.read_table(path, columns=columns).slice(0, rows - len(tiles))
        for record in table.to_pylist():
            row = []
            for column in columns:
                picture = Image.open(io.BytesIO(record[column]["bytes"])).convert("RGB")
                width = max(1, round(picture.width * height / picture.height))
                row.append(picture.resize((width, height), Image.Resampling.BILINEAR))
            tiles.append(row)
        if len(tiles) >= rows:
            break
    if not tiles:
        raise ValueError(f"{output} holds no rows yet")
    label_height, gap = 18, 4
    widths = [max(row[i].width for row in tiles) for i in range(len(columns))]
    sheet = Image.new("RGB", (sum(widths) + gap * (len(widths) + 1), label_height + len(tiles) * (height + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    x = gap
    for i, label in enumerate(labels):
        draw.text((x, 3), label, fill="black")
        for r, row in enumerate(tiles):
            sheet.paste(row[i], (x, label_height + gap + r * (height + gap)))
        x += widths[i] + gap
    destination.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(destination)
    return len(tiles)
