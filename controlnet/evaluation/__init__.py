"""Measuring how well generated images follow their condition (``cn-eval``).

    >>> from controlnet.evaluation import EvalConfig, evaluate
    >>> result = evaluate(EvalConfig(samples=Path("samples"), output=Path("report.json"), dataset="./ds"))
    >>> result.report["metrics"]["f1"]["mean"]

Each sample is re-annotated with the annotator and parameters that made its condition (read from
the dataset's ``build.json``) and scored with the measure of the condition's kind, following
ControlNet++ (Li et al., ECCV 2024) where it has a protocol; see docs/evaluation.md. The parts, one
job each: :mod:`~controlnet.evaluation.config` (options), :mod:`~controlnet.evaluation.metrics`
(pure metric functions), :mod:`~controlnet.evaluation.measures` (which metrics for which kind),
:mod:`~controlnet.evaluation.pairing` (samples to conditions), :mod:`~controlnet.evaluation.runner`
(the run), :mod:`~controlnet.evaluation.report` (JSON, Markdown, contact sheet),
:mod:`~controlnet.evaluation.clip` and :mod:`~controlnet.evaluation.quality` (CLIP score, FID/KID),
:mod:`~controlnet.evaluation.training` (the trainer's ``--eval-every`` hook).
"""

from controlnet.evaluation.config import EvalConfig
from controlnet.evaluation.runner import EvalError, EvalResult, evaluate

__all__ = ["EvalConfig", "EvalError", "EvalResult", "evaluate"]
