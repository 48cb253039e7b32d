"""What a dataset build is asked to do (:class:`BuildConfig`) and what identifies its output.

Fields declared with :func:`annotators.base.param` carry their help text and range; ``cn-annotate``
generates its build options from them. ``runtime`` fields change how, not what, is built, and are
left out of the identity that a resumed build must match.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import annotators
from annotators.base import Annotator, AnnotatorConfig, param
from annotators.files import DEFAULT_MAX_FILE_BYTES
from annotators.image import DEFAULT_MAX_PIXELS, IMAGE_ENCODINGS
from controlnet.dataset.layout import Layout
from controlnet.dataset.sources import DEFAULT_PROMPT

if TYPE_CHECKING:
    from annotators.data import DataKind
    from controlnet.dataset.sources import Source

__all__ = ["DEFAULT_RESOLUTION", "ENGINES", "FORMAT_VERSION", "BuildConfig", "BuildError", "default_workers"]

#: bumped when the same identity would give different rows (2: maps of re-encoded JPEGs are computed
#: from the stored JPEG's pixels, gray sources are stored gray)
FORMAT_VERSION = 2
#: the reference annotators' default ``resize_image`` resolution
DEFAULT_RESOLUTION = 512
#: where a build runs: this machine's process pool, or a Ray cluster (controlnet.dataset.engines)
ENGINES = ("local", "ray")
#: how JPEGs that are shrunk are decoded (BuildConfig.decode)
DECODES = ("exact", "reduced")
#: identity entries added after the first builds, with the value those builds had: an older
#: output's identity gets them before it is compared, so that it can still be resumed
IDENTITY_ADDED = {"decode": "exact"}


class BuildError(RuntimeError):
    """A build that cannot start (or continue), with a one-line reason for the user."""


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build needs; :meth:`identity` is what must match to resume into ``output``.

    ``annotators`` pairs each annotator id with its config. ``filters`` holds the filter configs of
    the annotators' data kinds (e.g. :class:`annotators.data.PoseFilters`); a kind without one in
    the tuple keeps every row.
    """

    input: str
    output: Path
    annotators: tuple[tuple[str, AnnotatorConfig], ...]
    filters: tuple[AnnotatorConfig, ...] = ()
    resolution: int = param(DEFAULT_RESOLUTION, "short side of the stored pairs, as the reference resize_image (multiples of 64)", ge=64)
    keep_size: bool = param(False, "keep each image's own size instead of resizing")
    prompt: str = param(DEFAULT_PROMPT, "caption of images with no sidecar .txt, metadata file or caption column")
    image_column: str | None = param(None, "image column of a dataset input (default: image)")
    caption_column: str | None = param(None, "caption column of a dataset input (default: text, if present)")
    split: str = param("train", "split of a dataset input")
    revision: str | None = param(None, "branch, tag or commit of a Hub dataset input (default: the latest commit, which is recorded)")
    workers: int = param(0, "worker processes (0: one per core)", ge=0, runtime=True)
    batch_size: int | None = param(None, "images per task (default: the annotators' preferred batch, else 8)", ge=1, runtime=True)
    shard_size: int = param(1000, "inputs per Parquet shard, at most", ge=1, runtime=True)
    max_pixels: int = param(DEFAULT_MAX_PIXELS, "larger images are skipped", ge=1)
    max_file_bytes: int = param(DEFAULT_MAX_FILE_BYTES, "larger input files (images, caption and metadata files) are skipped or refused", ge=1)
    image_format: str = param(
        "auto",
        "format of re-encoded images (resized, rotated, not JPEG/PNG/WebP); auto: JPEG for JPEG "
        "sources, else PNG; png and webp are lossless",
        choices=("auto", *IMAGE_ENCODINGS),
    )
    jpeg_quality: int = param(95, "quality of the JPEG images written", ge=1, le=100)
    decode: str = param(
        "exact",
        "how JPEGs to be shrunk are decoded: exact (at full size, then the reference resize) or reduced "
        "(libjpeg's DCT-domain decode at 1/2, 1/4 or 1/8 of the size that still covers the target, then the "
        "same resize; several times faster on camera photos, maps slightly different: docs/throughput.md)",
        choices=DECODES,
    )
    overwrite: bool = param(False, "replace an output folder built with other settings", runtime=True)
    license: str | None = param(None, "licence of the images, as a Hub licence id (e.g. cc-by-4.0, other); shown in the card", runtime=True)
    engine: str = param("local", "where the images are processed: local (worker processes on this machine) or ray (a Ray cluster, pip install 'cn-annotate[ray]')", choices=ENGINES, runtime=True)
    ray_address: str | None = param(None, "with --engine ray: the cluster to join, 'auto' (the one this machine belongs to) or its head's host:port (default: start Ray on this machine with --workers CPUs)", runtime=True)
    ray_actors: int = param(0, "with --engine ray and an annotator on a GPU: annotating actors, each loading the models once (0: as many as the cluster's GPUs hold)", ge=0, runtime=True)
    ray_gpus_per_actor: float = param(1.0, "with --engine ray: GPUs each annotating actor reserves (0.5: two actors share a GPU)", gt=0, runtime=True)
    central: bool | None = field(default=None)  # one annotating process; None: when an annotator runs on an accelerator

    def __post_init__(self) -> None:
        if not self.annotators:
            raise ValueError("at least one annotator is needed")
        ids = [name for name, _ in self.annotators]
        if len(set(ids)) != len(ids):
            raise ValueError(f"an annotator is named twice: {', '.join(ids)}")
        try:
            self.prompt.encode("utf-8")
        except UnicodeEncodeError:  # bytes of a command line that are not UTF-8 reach Python as lone surrogates
            raise ValueError("the prompt is not valid UTF-8 text") from None
        for f in dataclasses.fields(self):
            meta = f.metadata
            value = getattr(self, f.name)
            if value is None or "help" not in meta:
                continue
            if meta["ge"] is not None and value < meta["ge"]:
                raise ValueError(f"{f.name} must be at least {meta['ge']}, got {value}")
            if meta["le"] is not None and value > meta["le"]:
                raise ValueError(f"{f.name} must be at most {meta['le']}, got {value}")
            if meta["gt"] is not None and value <= meta["gt"]:
                raise ValueError(f"{f.name} must be more than {meta['gt']}, got {value}")
            if meta["choices"] is not None and value not in meta["choices"]:
                raise ValueError(f"{f.name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
        if self.license is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", self.license):
            raise ValueError(f"license must be a Hub licence id such as cc-by-4.0, mit or other, got {self.license!r}")
        if self.workers == 0:
            object.__setattr__(self, "workers", default_workers())
        for config in self.filters:
            if not any(self.filter_for(column.kind) is config for column in self.layout().data_columns):
                raise ValueError(f"{type(config).__name__} applies to no data kind of {', '.join(ids)}")

    def instances(self) -> list[Annotator]:
        """The annotators, created from their configs (nothing loads until they are used)."""
        return [annotators.get_class(name)(config) for name, config in self.annotators]

    def layout(self) -> Layout:
        return Layout.of([(name, annotators.get_class(name).data_kind) for name, _ in self.annotators])

    def identity(self, source: Source, weights: dict[str, Any] | None = None) -> dict[str, Any]:
        """What determines the dataset's content: annotators and their output parameters, the
        identity of their weights, sizing, how re-encoded images are stored, filters, captions'
        default and the input. Runtime options
        (workers, device, batch size, where the weights are) are left out."""
        return _jsonable(
            {
                "format": FORMAT_VERSION,
                "annotators": {name: config.identity() for name, config in self.annotators},
                "weights": weights or {},
                "filters": {type(config).__name__: config.identity() for config in self.filters},
                "resolution": None if self.keep_size else self.resolution,
                "prompt": self.prompt,
                "max_pixels": self.max_pixels,
                "max_file_bytes": self.max_file_bytes,
                "image_format": self.image_format,
                "jpeg_quality": self.jpeg_quality,
                "decode": self.decode,
                "input": source.identity,
            }
        )

    @property
    def is_central(self) -> bool:
        """Whether one process annotates (an accelerator is in use) while workers decode and encode."""
        if self.central is not None:
            return self.central
        return any(annotator.device != "cpu" for annotator in self.instances())

    def chunk_size(self) -> int:
        """Images per task: ``batch_size``, else the largest preferred batch, else 8 (which amortises
        the cost of handing a task to a worker)."""
        if self.batch_size is not None:
            return self.batch_size
        preferred = max(annotator.preferred_batch_size for annotator in self.instances())
        return preferred if preferred > 1 else 8

    def filter_for(self, kind: DataKind) -> AnnotatorConfig | None:
        """The filter config that applies to data of ``kind``, if one was given."""
        return filter_for(kind, self.filters)


def filter_for(kind: DataKind, filters: tuple[AnnotatorConfig, ...]) -> AnnotatorConfig | None:
    """The one of ``filters`` that applies to data of ``kind`` (an instance of its ``Filters``), if any."""
    if kind.Filters is None:
        return None
    return next((config for config in filters if isinstance(config, kind.Filters)), None)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
