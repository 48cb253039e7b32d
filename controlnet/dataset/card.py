"""The dataset card (``README.md``) of a built dataset, and a contact sheet for a quick look.

The card's YAML header is written by huggingface_hub's ``DatasetCardData``: licence, pretty name,
task categories, tags, size, the ``configs`` the Hub's viewer and ``load_dataset`` read, and the
features. Its body records the source (by name, or Hub id and commit: never a local path), how the
dataset was made (annotators with their parameters, weights, weights licences and versions; package
versions), how many images it holds and how many were skipped, and a few preview rows.

Text that comes from the inputs (captions, file names, folder names, the prompt, parameter values)
is shown bounded (:data:`CELL_CHARS`) and escaped: control characters (ESC, NUL) as ``\\xNN``, HTML
as entities, so that a hostile caption can neither bloat the card nor script the Hub's page.
"""

from __future__ import annotations

import html
import io
import json
import os
import platform
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from annotators.base import AnnotatorConfig
from controlnet.dataset.layout import BUILD_FILE, CARD_FILE, Layout, shard_paths

__all__ = ["CardInfo", "contact_sheet", "package_versions", "previous_license", "render_card", "set_repo_id", "write_card"]

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
    license: str | None = None  # of the images, a Hub licence id

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


def _yaml_features(layout: Layout) -> list[dict[str, Any]]:
    """The columns in the card's ``dataset_info.features`` form (what ``datasets`` writes)."""
    features = layout.features()
    simple = {
        name: {"name": name, "dtype": "image"} if feature == {"_type": "Image"} else {"name": name, "dtype": feature["dtype"]}
        for name, feature in features.items()
        if feature == {"_type": "Image"} or (feature.get("_type") == "Value" and set(feature) == {"_type", "dtype"})
    }
    if len(simple) == len(features):
        return list(simple.values())
    import datasets  # a plug-in's kind with a nested feature: let datasets write its YAML form

    return datasets.Features.from_dict(features)._to_yaml_list()


def source_description(source: dict[str, Any]) -> str:
    """The input in words, with no local path: a folder, list or image by name, a Hub dataset by id and commit."""
    kind = source.get("kind")
    if kind == "dataset" and "hub_id" in source:
        hub_id = source["hub_id"]
        revision = f" at commit `{source['revision']}`" if source.get("revision") else " (revision unknown: built offline)"
        where = f"the Hub dataset [`{hub_id}`](https://huggingface.co/datasets/{hub_id}){revision}"
    elif kind == "dataset":
        where = f"the local dataset `{_cell(source.get('name'))}`"
    else:
        where = {"folder": "the image folder `{}`", "list": "the images listed in `{}`", "image": "the image `{}`"}.get(str(kind), "`{}`").format(_cell(source.get("name")))
    if kind == "dataset":
        where += f", split `{source.get('split')}`, column `{source.get('image_column')}`"
        if source.get("caption_column"):
            where += f", captions from `{source['caption_column']}`"
    return where


def _pretty_name(info: CardInfo) -> str:
    source = info.identity.get("input", {})
    name = source.get("hub_id") or source.get("name") or "images"
    return f"ControlNet pairs ({', '.join(info.layout.annotators)}) of {name}"


def _annotator_rows(info: CardInfo) -> list[tuple[str, str, str, str, str]]:
    """Per annotator: id, parameters, weights files, weights licence, the package (and version) that
    provides it."""
    import annotators

    infos = {name: annotators.info(name) for name in info.layout.annotators}
    rows = []
    for name, params in info.identity.get("annotators", {}).items():
        shown = ", ".join(f"{key}={value!r}" for key, value in params.items()) or "(none)"
        files = info.identity.get("weights", {}).get(name) or []
        weights = ", ".join(f"`{f['name']}` ({f['bytes']:,} bytes)" for f in files) or ("bundled" if infos[name].weights_license else "none")
        source = infos[name].source
        package = "cn-annotate" if source in ("builtin", "registered") else source
        version = info.versions.get(package) or _version(package)
        rows.append((name, shown, weights, infos[name].weights_license or "no weights", f"{package} {version}" + (" (registered in code)" if source == "registered" else "")))
    return rows


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def card_yaml(info: CardInfo) -> str:
    """The card's YAML header, written by huggingface_hub's :class:`DatasetCardData`."""
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(
        license=info.license or "unknown",
        pretty_name=_pretty_name(info),
        task_categories=["image-to-image", "text-to-image"],
        tags=["controlnet", "cn-annotate", *info.layout.annotators],
        size_categories=[_size_category(info.rows)],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        # datasets caches a local folder with YAML configs by its name and these numbers alone, not
        # by its files: without them a rebuilt or resumed folder would load stale rows from the cache.
        dataset_info={
            "features": _yaml_features(info.layout),
            "splits": [{"name": "train", "num_bytes": info.data_bytes, "num_examples": info.rows}],
            "download_size": info.data_bytes,
        },
    )
    return data.to_yaml()


def render_card(info: CardInfo, dataset_id: str = "path/to/dataset") -> str:
    """The card. ``dataset_id`` is what its usage snippet loads: the repo id once pushed."""
    annotator_ids = list(info.layout.annotators)
    names = ", ".join(f"`{name}`" for name in annotator_ids)
    resolution = info.identity.get("resolution")
    lines = [
        "---",
        card_yaml(info).rstrip("\n"),
        "---",
        "",
        f"# ControlNet training pairs: {names}",
        "",
        (
            f"Made with cn-annotate from {source_description(info.identity.get('input', {}))}: each image is paired with "
            f"the condition map of {names}. The columns are the defaults of diffusers' `train_controlnet.py`, so it "
            "trains on this dataset as it is:"
        ),
        "",
        "```python",
        "from datasets import load_dataset",
        USAGE.format(dataset_id=json.dumps(dataset_id)),
        "```",
        "",
        "## Columns",
        "",
        "| column | content |",
        "|---|---|",
    ]
    jpeg = f"JPEG (quality {info.identity.get('jpeg_quality')})"
    image_format = str(info.identity.get("image_format", "auto"))
    stored_as = {"auto": f"{jpeg} for JPEG sources, PNG for the rest", "jpeg": jpeg, "png": "PNG", "webp": "lossless WebP"}
    described = {
        "image": "the input image, resized like the reference `resize_image`"
        + (f" (short side {resolution}, sides multiples of 64)" if resolution else " (original size)")
        + ". The source file itself when it is a JPEG, PNG or WebP that needs no resize, rotation or alpha; "
        f"otherwise re-encoded as {stored_as.get(image_format, image_format)}. Gray sources stay gray. "
        "The maps are computed from exactly the pixels this image decodes to",
        "conditioning_image": f"the condition map of `{annotator_ids[0]}` (lossless PNG), same size as `image`",
        "text": "caption: sidecar `.txt`, then `metadata.jsonl`/`metadata.csv`, then the dataset's caption column, else the default prompt",
        "file_name": "the source image's path relative to the input (its suffix is the source's format)",
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
        "| annotator | parameters | weights | weights licence | annotator from |",
        "|---|---|---|---|---|",
    ]
    rows = _annotator_rows(info)
    lines += [
        f"| `{name}` | {_cell(shown, limit=4 * CELL_CHARS)} | {_cell(weights)} | {_cell(licence)} | {_cell(package)} |"
        for name, shown, weights, licence, package in rows
    ]
    lines += [
        "",
        f"- Source: {source_description(info.identity.get('input', {}))}",
        f"- Resolution: {f'{resolution} (reference `resize_image`)' if resolution else 'original sizes (--keep-size)'}",
        *(["- Decoding: JPEGs at least twice the target size decoded by libjpeg at 1/2, 1/4 or 1/8 scale, then resized (`--decode reduced`)"] if info.identity.get("decode") == "reduced" else []),
        f"- Default prompt: \"{_cell(info.identity.get('prompt'))}\"",
    ]
    for column in info.layout.data_columns:
        for config in info.filters:
            if column.kind.Filters is not None and isinstance(config, column.kind.Filters):
                lines += column.kind.filter_lines(config)
    lines.append("- Packages: " + ", ".join(f"{name} {version}" for name, version in info.versions.items()))
    lines += [
        "",
        "## Licences",
        "",
        f"- Images: `{info.license}`, as declared by whoever built this dataset (`--license`)" if info.license else "- Images: not declared (`--license` declares it)",
    ]
    lines += [f"- Maps of `{name}`: computed with weights under {licence}" for name, _, _, licence, _ in rows if licence != "no weights"]
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


#: the card's usage line; :func:`set_repo_id` rewrites it when the dataset is pushed
USAGE = 'dataset = load_dataset({dataset_id}, split="train")'
_USAGE_LINE = re.compile(r'^dataset = load_dataset\(".*"(?:, split="train")\)$', re.MULTILINE)


def set_repo_id(output: Path, repo_id: str) -> None:
    """Name ``repo_id`` in the usage snippet of ``output``'s card (done before it is pushed)."""
    path = output / CARD_FILE
    text = path.read_text(encoding="utf-8")
    updated = _USAGE_LINE.sub(lambda _: USAGE.format(dataset_id=json.dumps(repo_id)), text, count=1)
    tmp = output / f".{CARD_FILE}.tmp"
    tmp.write_text(updated, encoding="utf-8")
    os.replace(tmp, path)


def previous_license(output: Path) -> str | None:
    """The licence an earlier run of this build wrote in the card, so that a resumed run keeps it."""
    if not (output / CARD_FILE).is_file():  # a new build: no need to import the card reader
        return None
    import yaml
    from huggingface_hub.repocard import metadata_load

    try:
        found = (metadata_load(output / CARD_FILE) or {}).get("license")
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # no card yet, or one that does not parse
        return None
    return found if isinstance(found, str) and found != "unknown" else None


def write_card(output: Path, info: CardInfo) -> None:
    """Write ``output/README.md`` atomically; its usage snippet names the folder until it is pushed."""
    tmp = output / f".{CARD_FILE}.tmp"
    tmp.write_text(render_card(info, output.resolve().name), encoding="utf-8")
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
