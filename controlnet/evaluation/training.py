"""The trainer's ``--eval-every`` hook: scores the validation samples that the trainer makes from
the first rows of its dataset against those rows' conditions, so that condition-following can be
logged next to the loss. The annotator and its parameters come from the dataset's ``build.json``,
as for ``cn-eval``; it runs on the trainer's device when it is a torch annotator."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

import annotators
from controlnet.dataset.read import condition_columns, decode_data, load_build
from controlnet.evaluation.measures import ScoreOptions, Target, measure_for, score_samples

__all__ = ["ValidationScorer"]


class ValidationScorer:
    """Mean condition-following metrics of validation samples; built once per training run."""

    def __init__(self, dataset: str, revision: str | None, condition_column: str, device: str, options: ScoreOptions | None = None) -> None:
        build = load_build(dataset, revision)
        if not build:
            raise ValueError(f"--eval-every needs a dataset built by cn-annotate: {dataset} has no build.json naming its annotator")
        built_by = list(build["annotators"])
        annotator = built_by[0] if condition_column == "conditioning_image" else condition_column
        self.columns = condition_columns(built_by, annotator)
        cls = annotators.get_class(annotator)
        self.measure = measure_for(cls)
        if self.measure.uses_data and self.columns.data is None:
            raise ValueError(f"--eval-every: {annotator} is measured on its structured data, which {dataset} does not hold")
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        runtime = {"device": device} if "device" in fields else {}
        self.annotator = cls(**build["annotators"][annotator], **runtime)
        self.options = options or ScoreOptions()

    def __call__(self, rows: Sequence[dict[str, Any]], samples: Sequence[Sequence[np.ndarray]]) -> dict[str, float]:
        """``samples[i]`` were made from ``rows[i]``; returns ``eval/<metric>`` means over all of them
        (a metric that no sample could be scored for is left out)."""
        targets, flat = [], []
        for row, row_samples in zip(rows, samples, strict=True):
            data = None
            if self.measure.uses_data and self.columns.data is not None and self.columns.kind is not None:
                data = decode_data(self.columns.kind, row[self.columns.data])
            target = Target(np.asarray(row[self.columns.map]), data)
            targets += [target] * len(row_samples)
            flat += list(row_samples)
        results = [r.scores for r in score_samples(self.annotator, self.measure, targets, flat, self.options) if r.scores]
        means = {}
        for metric in self.measure.metrics:
            values = [scores[metric.name] for scores in results if scores.get(metric.name) is not None]
            if values:
                means[f"eval/{metric.name}"] = float(np.mean(values))
        return means
