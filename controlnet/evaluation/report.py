"""The evaluation report: aggregates with bootstrap intervals, the JSON a program reads, the
Markdown a person reads, and a contact sheet of the worst-following samples (condition | sample |
re-annotation)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controlnet.evaluation.measures import Metric
from controlnet.evaluation.metrics import bootstrap_interval

__all__ = ["FORMAT_VERSION", "WorstSamples", "aggregate", "contact_sheet", "render_markdown"]

#: bumped when the JSON's structure changes
FORMAT_VERSION = 1
_TILE_HEIGHT = 160


def aggregate(records: list[dict[str, Any]], metric_list: list[Metric], resamples: int, confidence: float, seed: int) -> dict[str, dict[str, Any]]:
    """Per metric over the samples that have it: mean, standard deviation, median, count, the
    bootstrap interval of the mean (``ci``, None below two samples) and its direction."""
    result = {}
    for index, metric in enumerate(metric_list):
        values = [r["scores"][metric.name] for r in records if r["scores"].get(metric.name) is not None]
        if not values:
            result[metric.name] = {"mean": None, "std": None, "median": None, "ci": None, "n": 0, "higher_is_better": metric.higher_is_better, "description": metric.description}
            continue
        data = np.asarray(values, np.float64)
        # Each metric gets its own stream of resamples, reproducible from the one seed.
        interval = bootstrap_interval(data, resamples, confidence, seed + index)
        result[metric.name] = {
            "mean": float(data.mean()),
            "std": float(data.std(ddof=1)) if data.size > 1 else 0.0,
            "median": float(np.median(data)),
            "ci": list(interval) if interval is not None else None,
            "n": int(data.size),
            "higher_is_better": metric.higher_is_better,
            "description": metric.description,
        }
    return result


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: what was measured, the metrics table, notes, worst samples."""
    annotator = report["annotator"]
    counts = report["counts"]
    level = round(report["bootstrap"]["confidence"] * 100)
    params = ", ".join(f"{k}={v}" for k, v in annotator["params"].items()) or "no parameters"
    settings = ", ".join(f"{k} {v}" for k, v in report["settings"].items())
    lines = [
        f"# How well the samples follow their {annotator['id']} conditions",
        "",
        f"- Condition kind: {annotator['kind']}; re-annotated with `{annotator['id']}` ({params}; from {annotator['params_from']})",
        f"- Dataset: {report['dataset'] or '(none: condition images in the samples folder)'}, split {report['split']}",
        f"- Samples scored: {counts['scored']} of {counts['samples']} ({counts['skipped']} skipped)",
        f"- Settings: {settings}",
        "",
        f"| metric | mean | {level}% CI | median | n | better | what it is |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, values in report["metrics"].items():
        ci = values["ci"]
        interval = f"{_number(ci[0])} – {_number(ci[1])}" if ci else "–"
        better = "higher" if values["higher_is_better"] else "lower"
        lines.append(f"| {name} | {_number(values['mean'])} | {interval} | {_number(values['median'])} | {values['n']} | {better} | {values['description']} |")
    quality = report.get("quality")
    if quality:
        lines += ["", f"FID {_number(quality['fid'])}, KID {_number(quality['kid'])} ± {_number(quality['kid_std'])} over {quality['n']} sample/image pairs."]
    if report["notes"]:
        lines += ["", "Notes:", *(f"- {note}" for note in report["notes"])]
    if report["worst"]:
        primary = report["primary_metric"]
        lines += ["", f"## Worst-following samples (by {primary})", "", f"| sample | {primary} | prompt |", "|---|---|---|"]
        by_sample = {r["sample"]: r for r in report["per_sample"]}
        for name in report["worst"]:
            record = by_sample[name]
            prompt = (record.get("prompt") or "").replace("|", "\\|")
            lines.append(f"| {name} | {_number(record['scores'].get(primary))} | {prompt} |")
        if report["files"].get("contact_sheet"):
            lines += ["", f"![condition, sample and re-annotation of the worst-following samples]({report['files']['contact_sheet']})"]
    if report["skipped"]:
        lines += ["", "## Skipped", "", *(f"- {s['sample']}: {s['reason']}" for s in report["skipped"][:50])]
        if len(report["skipped"]) > 50:
            lines.append(f"- … and {len(report['skipped']) - 50} more (see the JSON)")
    return "\n".join(lines) + "\n"


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """An RGB copy at most :data:`_TILE_HEIGHT` pixels high (the sheet's row height)."""
    import cv2

    from annotators.image import hwc3

    rgb = hwc3(image)
    height, width = rgb.shape[:2]
    if height <= _TILE_HEIGHT:
        return rgb.copy()
    return cv2.resize(rgb, (max(1, round(width * _TILE_HEIGHT / height)), _TILE_HEIGHT), interpolation=cv2.INTER_AREA)


@dataclass
class _Row:
    badness: float
    order: int
    sample: str
    label: str
    tiles: tuple[np.ndarray, np.ndarray, np.ndarray]


class WorstSamples:
    """Keeps thumbnails of the ``size`` worst-following samples seen so far by ``metric``."""

    def __init__(self, size: int, metric: Metric) -> None:
        self.size, self.metric = size, metric
        self.rows: list[_Row] = []
        self._offered = 0  # ties keep the order in which samples came

    def offer(self, label: str, score: float | None, condition: np.ndarray, sample: np.ndarray, reannotation: np.ndarray) -> None:
        if self.size == 0 or score is None:
            return
        badness = -score if self.metric.higher_is_better else score
        if len(self.rows) >= self.size and badness <= self.rows[-1].badness:
            return
        tiles = (_thumbnail(condition), _thumbnail(sample), _thumbnail(reannotation))
        self._offered += 1
        self.rows.append(_Row(badness, self._offered, label, f"{label}: {self.metric.name} {score:.3g}", tiles))
        self.rows.sort(key=lambda r: (-r.badness, r.order))
        del self.rows[self.size :]

    @property
    def samples(self) -> list[str]:
        return [row.sample for row in self.rows]


def contact_sheet(worst: WorstSamples, destination: Path) -> bool:
    """A PNG with one row per worst-following sample, worst first: condition | sample |
    re-annotation, each row labelled with the sample and its score. False when there is no row."""
    from PIL import Image, ImageDraw

    if not worst.rows:
        return False
    label_height, gap = 16, 4
    heights = [max(t.shape[0] for t in row.tiles) for row in worst.rows]
    widths = [max(row.tiles[i].shape[1] for row in worst.rows) for i in range(3)]
    header = 18
    sheet = Image.new("RGB", (sum(widths) + gap * 4, header + sum(h + label_height + gap for h in heights) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    x = gap
    for title, width in zip(("condition", "sample", "re-annotation"), widths):
        draw.text((x, 3), title, fill="black")
        x += width + gap
    y = header
    for row, height in zip(worst.rows, heights):
        draw.text((gap, y), row.label, fill="black")
        x = gap
        for tile, width in zip(row.tiles, widths):
            sheet.paste(Image.fromarray(tile), (x, y + label_height))
            x += width + gap
        y += height + label_height + gap
    destination.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(destination)
    return True


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: a NaN or infinity in a report is a bug to surface, not a value to write.
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
