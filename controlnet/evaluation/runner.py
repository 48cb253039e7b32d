"""Running an evaluation: pair the samples with their conditions, re-annotate each sample with the
annotator (and parameters) that made its condition, score it, and write the reports.

Samples are read, re-annotated and scored in batches, so memory does not grow with their number:
only the scores and thumbnails of the worst-following samples are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import annotators
from annotators.image import ImageError, load_image
from annotators.weights import WeightsNotFoundError
from controlnet.dataset.read import decode_data
from controlnet.evaluation.clip import ClipScorer, ClipUnavailableError
from controlnet.evaluation.config import EvalConfig
from controlnet.evaluation.measures import Measure, Metric, ScoreOptions, Target, measure_for, score_samples
from controlnet.evaluation.pairing import EvalError, Pair, Plan, plan_evaluation
from controlnet.evaluation.quality import QualityMeter
from controlnet.evaluation.report import FORMAT_VERSION, WorstSamples, aggregate, contact_sheet, render_markdown, write_json

__all__ = ["EvalError", "EvalResult", "evaluate"]

CLIP_METRIC = Metric("clip_score", True, "CLIP score of sample and prompt, 100 x max(cosine, 0)")
#: samples per batch when the annotator gains nothing from batching
_DEFAULT_CHUNK = 8

ProgressCallback = Callable[[int, int], None]


@dataclass
class EvalResult:
    report: dict[str, Any]
    json_path: Path
    markdown_path: Path
    sheet_path: Path | None


@dataclass
class _Loaded:
    pair: Pair
    sample: np.ndarray
    target: Target
    source: np.ndarray | None  # the dataset image the sample stands for (FID/KID), if any
    prompt: str


def _public_name(dataset: str | None) -> str | None:
    """A dataset as the report names it: a Hub id as it is, a local folder by its name only (a
    report may be shared; local paths stay out of it)."""
    if dataset is None:
        return None
    return Path(dataset).name if Path(dataset).exists() else dataset


class _Loader:
    """Reads a pair's sample, condition (and data) and source image."""

    def __init__(self, config: EvalConfig, plan: Plan, measure: Measure, wants_source: bool) -> None:
        self.folder = config.samples
        self.plan, self.measure = plan, measure
        self.rows = None
        if plan.rows is not None and plan.columns is not None:
            columns = plan.columns
            if measure.uses_data and columns.data is None:
                raise EvalError(f"{plan.annotator} is measured on its {columns.kind.name if columns.kind else 'structured'} data, which the dataset does not hold")
            wanted = [columns.map, *([columns.data] if measure.uses_data else []), *(["image"] if wants_source else []), "text"]
            self.rows = plan.rows.select_columns([c for c in dict.fromkeys(wanted) if c in plan.rows.column_names])

    def __call__(self, pair: Pair) -> _Loaded:
        sample = load_image(self.folder / pair.sample)
        if pair.row is None:
            if self.measure.uses_data:
                raise EvalError(f"{self.plan.annotator} is measured on the condition's structured data, which only a dataset row holds; sample with cn-sample --dataset")
            assert pair.condition_image is not None
            return _Loaded(pair, sample, Target(load_image(self.folder / pair.condition_image)), None, pair.prompt or "")
        assert self.rows is not None and self.plan.columns is not None
        row = self.rows[pair.row]
        columns = self.plan.columns
        condition = np.asarray(row[columns.map])
        data = decode_data(columns.kind, row[columns.data]) if self.measure.uses_data and columns.kind is not None and columns.data else None
        source = np.asarray(row["image"].convert("RGB")) if "image" in row else None
        prompt = pair.prompt if pair.prompt is not None else str(row.get("text") or "")
        return _Loaded(pair, sample, Target(condition, data), source, prompt)


def _create_annotator(plan: Plan, config: EvalConfig) -> annotators.Annotator:
    cls = annotators.get_class(plan.annotator)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(plan.params) - fields)
    if unknown:
        raise EvalError(f"{plan.annotator}: the recorded parameters {', '.join(unknown)} are not among its parameters (made by another version?)")
    try:
        return cls(**plan.params, **config.annotator_runtime(fields))
    except ValueError as err:
        raise EvalError(f"{plan.annotator}: {err}") from None


def evaluate(config: EvalConfig, progress: ProgressCallback | None = None) -> EvalResult:
    """Score how well the samples in ``config.samples`` follow their conditions and write the JSON
    report to ``config.output``, the Markdown next to it and the contact sheet of the worst ones."""
    plan = plan_evaluation(config)
    try:
        measure = measure_for(annotators.get_class(plan.annotator))
    except ValueError as err:
        raise EvalError(str(err)) from None
    annotator = _create_annotator(plan, config)
    notes = list(plan.notes)
    quality, why_not = QualityMeter.create(config.inception_weights)
    if why_not:
        notes.append(why_not)
    clip = ClipScorer(config.clip_model, config.device or "cpu") if config.clip_model else None
    if clip is None:
        notes.append("CLIP score not computed: no --clip-model given")
    load = _Loader(config, plan, measure, wants_source=quality is not None)
    options = config.score_options()
    worst = WorstSamples(config.worst, measure.primary)
    records: list[dict[str, Any]] = []
    skipped = list(plan.skipped)
    chunk = config.batch_size or (annotator.preferred_batch_size if annotator.preferred_batch_size > 1 else _DEFAULT_CHUNK)
    try:
        for start in range(0, len(plan.pairs), chunk):
            batch: list[_Loaded] = []
            for pair in plan.pairs[start : start + chunk]:
                try:
                    batch.append(load(pair))
                except ImageError as err:
                    skipped.append({"sample": pair.sample, "reason": err.reason})
            if batch:
                _score_batch(batch, annotator, measure, options, clip, quality, worst, records, skipped)
            if progress is not None:
                progress(min(start + chunk, len(plan.pairs)), len(plan.pairs))
    except WeightsNotFoundError as err:
        raise EvalError(str(err)) from None
    except ClipUnavailableError as err:
        raise EvalError(str(err)) from None
    finally:
        annotator.close()

    metric_list = list(measure.metrics) + ([CLIP_METRIC] if clip is not None else [])
    quality_values = None
    if quality is not None:
        quality_values, why_not = quality.compute()
        if why_not:
            notes.append(why_not)
    sheet = config.sheet_path if contact_sheet(worst, config.sheet_path) else None
    report = {
        "format": FORMAT_VERSION,
        "dataset": _public_name(plan.dataset),
        "split": plan.split if plan.dataset else None,
        "annotator": {"id": plan.annotator, "kind": measure.kind, "params": plan.params, "params_from": plan.params_from},
        "primary_metric": measure.primary.name,
        "settings": {"edge_tolerance": config.edge_tolerance, "pck_threshold": config.pck_threshold},
        "counts": {"samples": len(plan.pairs) + len(plan.skipped), "scored": len(records), "skipped": len(skipped)},
        "metrics": aggregate(records, metric_list, config.bootstrap, config.confidence, config.seed),
        "quality": quality_values,
        "bootstrap": {"resamples": config.bootstrap, "confidence": config.confidence, "seed": config.seed, "method": "percentile"},
        "notes": notes,
        "worst": worst.samples,
        "files": {"markdown": config.markdown_path.name, "contact_sheet": sheet.name if sheet else None},
        "per_sample": records,
        "skipped": skipped,
    }
    write_json(report, config.output)
    config.markdown_path.write_text(render_markdown(report), encoding="utf-8")
    return EvalResult(report, config.output, config.markdown_path, sheet)


def _score_batch(
    batch: list[_Loaded], annotator: annotators.Annotator, measure: Measure, options: ScoreOptions, clip: ClipScorer | None,
    quality: QualityMeter | None, worst: WorstSamples, records: list[dict[str, Any]], skipped: list[dict[str, str]],
) -> None:
    scored = score_samples(annotator, measure, [b.target for b in batch], [b.sample for b in batch], options)
    clip_scores = clip([b.sample for b in batch], [b.prompt for b in batch]) if clip is not None else None
    for index, (item, result) in enumerate(zip(batch, scored)):
        scores = result.scores
        if scores is None:
            skipped.append({"sample": item.pair.sample, "reason": result.error or "not scored"})
            continue
        if clip_scores is not None:
            scores = {**scores, CLIP_METRIC.name: clip_scores[index]}
        if quality is not None and item.source is not None:
            quality.update(item.source, item.sample)
        records.append({"sample": item.pair.sample, "row": item.pair.row, "prompt": item.prompt, **item.pair.info, "scores": scores})
        worst.offer(item.pair.sample, scores.get(measure.primary.name), item.target.map, item.sample, result.annotation.map)
