"""What an evaluation is asked to do: :class:`EvalConfig`, the one source of ``cn-eval``'s options.

Fields declared with :func:`annotators.base.param` carry their help text and range and are
validated on construction. The annotator's output parameters are not options: they are read from
the dataset's ``build.json`` (or the sample manifest), so the samples are re-annotated exactly as
the conditions were made. Only its ``runtime`` settings (weights location, device, batch size) are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotators.base import AnnotatorConfig, param
from controlnet.evaluation.measures import ScoreOptions

__all__ = ["EvalConfig"]


@dataclass(frozen=True)
class EvalConfig(AnnotatorConfig):
    """``samples``: a folder of generated images, written by ``cn-sample`` (with ``manifest.jsonl``)
    or named by the dataset rows' ``file_name`` stem. ``output``: the JSON report; the Markdown
    report and the contact sheet are written next to it (``.md``, ``-worst.png``)."""

    samples: Path
    output: Path
    dataset: str | None = param(None, "dataset folder or Hub id the samples were made from (default: the manifest's)")
    split: str | None = param(None, "dataset split (default: the manifest's, else train)")
    revision: str | None = param(None, "dataset revision (Hub)")
    annotator: str | None = param(None, "annotator whose condition the samples follow (default: the manifest's, else the dataset's first)")
    weights: str | None = param(None, "the annotator's checkpoint file or folder (default: $CN_ANNOTATE_WEIGHTS, then the Hub cache)", runtime=True)
    device: str | None = param(None, "torch device of the annotator and the CLIP model: cpu, cuda, cuda:N or mps (default: cpu)", runtime=True)
    batch_size: int | None = param(None, "samples re-annotated per batch (default: the annotator's preferred batch, else 8)", ge=1, runtime=True)
    edge_tolerance: int = param(0, "edges: pixels a sample's edge may be off and still count for F1", ge=0, le=64)
    pck_threshold: float = param(0.1, "pose: a keypoint is correct within this fraction of its person's bounding-box long side", gt=0.0, le=1.0)
    clip_model: str | None = param(None, "CLIP model folder or Hub id for the CLIP score of sample and prompt (default: not computed)")
    inception_weights: str | None = param(None, "Inception weights file for FID/KID (torch-fidelity's weights-inception-2015-12-05-6726825d.pth; default: the torch hub cache)")
    limit: int | None = param(None, "score at most this many samples", ge=1)
    bootstrap: int = param(1000, "bootstrap resamples for the confidence intervals (0: none)", ge=0)
    confidence: float = param(0.95, "confidence level of the intervals", gt=0.0, lt=1.0)
    seed: int = param(0, "seed of the bootstrap resampling")
    worst: int = param(8, "samples on the contact sheet of the worst-following ones (0: no sheet)", ge=0, le=256)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "samples", Path(self.samples))
        object.__setattr__(self, "output", Path(self.output))

    def score_options(self) -> ScoreOptions:
        return ScoreOptions(self.edge_tolerance, self.pck_threshold)

    def annotator_runtime(self, fields: set[str]) -> dict[str, Any]:
        """The runtime settings given for the annotator, among the config ``fields`` it has."""
        given = {"weights": self.weights, "device": self.device, "batch_size": self.batch_size}
        return {name: value for name, value in given.items() if value is not None and name in fields}

    @property
    def markdown_path(self) -> Path:
        return self.output.with_suffix(".md")

    @property
    def sheet_path(self) -> Path:
        return self.output.with_name(self.output.stem + "-worst.png")
