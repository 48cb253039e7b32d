"""Reading a built dataset back: its rows, its ``build.json``, and the columns that hold one
annotator's condition map and structured data (for the sampler and the evaluation).

A dataset is a local folder written by the builder or a Hub dataset id (pushed with
``cn-annotate push``, which uploads ``build.json`` with the shards).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import annotators
from controlnet.dataset.layout import BUILD_FILE, Layout

if TYPE_CHECKING:
    from annotators.data import DataKind

__all__ = ["ConditionColumns", "DatasetReadError", "condition_columns", "decode_data", "load_build", "load_rows"]


class DatasetReadError(ValueError):
    """A dataset that cannot be read as asked, with a one-line reason."""


def load_build(dataset: str, revision: str | None = None) -> dict[str, Any] | None:
    """The dataset's ``build.json`` (what made it: annotators and their parameters), or None when
    the dataset has none (it was not built by cn-annotate)."""
    folder = Path(dataset)
    if folder.is_dir():
        path = folder / BUILD_FILE
        if not path.is_file():
            return None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

        try:
            path = Path(hf_hub_download(dataset, BUILD_FILE, repo_type="dataset", revision=revision))
        except (LocalEntryNotFoundError, RepositoryNotFoundError) as err:  # the first is an EntryNotFoundError too
            raise DatasetReadError(f"dataset {dataset}: not a local folder, and not reachable on the Hub ({type(err).__name__})") from None
        except EntryNotFoundError:
            return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetReadError(f"dataset {dataset}: {BUILD_FILE} cannot be read ({err})") from None


def load_rows(dataset: str, split: str = "train", revision: str | None = None) -> Any:
    """The rows of one split as a ``datasets.Dataset`` (memory-mapped, decoded on access)."""
    from datasets import load_dataset

    try:
        if Path(dataset).is_dir():
            return load_dataset(str(dataset), split=split)
        return load_dataset(dataset, split=split, revision=revision)
    except (FileNotFoundError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetReadError(f"dataset {dataset}, split {split}: {first}") from None


@dataclass(frozen=True)
class ConditionColumns:
    """Where one annotator's output lies in a dataset."""

    annotator: str
    map: str  # the condition map column
    data: str | None  # the structured data column (keypoints, labels), if the annotator finds data
    kind: DataKind | None


def condition_columns(annotator_ids: list[str], annotator: str) -> ConditionColumns:
    """The columns of ``annotator`` in a dataset built by ``annotator_ids`` (in build order): the
    first one's map is ``conditioning_image``, and with several each also has a column of its id."""
    if annotator not in annotator_ids:
        raise DatasetReadError(f"the dataset was not annotated with {annotator!r}; it holds {', '.join(annotator_ids)}")
    layout = Layout.of([(name, annotators.get_class(name).data_kind) for name in annotator_ids])
    map_column = "conditioning_image" if annotator == annotator_ids[0] else annotator
    data = next((c for c in layout.data_columns if c.annotator == annotator), None)
    return ConditionColumns(annotator, map_column, data.name if data else None, data.kind if data else None)


def decode_data(kind: DataKind, value: Any) -> Any:
    """A data column's stored value as the annotator's data. Image columns (label maps) that
    ``datasets`` has already decoded to a PIL image are taken as the array they hold."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return np.asarray(value)
    return kind.decode(value)
