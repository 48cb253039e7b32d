"""The dataset layout: file names, columns, the Arrow schema and shard paths, written in one place.

A built dataset is the Hub's repository layout, which ``datasets.load_dataset(OUT, split="train")``
reads::

    OUT/README.md                   dataset card, with the YAML ``configs`` the Hub viewer reads
    OUT/data/train-00000.parquet    shards of rows, image bytes embedded
    OUT/build.json                  the build's identity, compared when the command is run again
    OUT/skipped.jsonl               one record per input that was skipped, with its reason
    OUT/.cn-annotate.lock           held by the build running in the folder (see lock.py)

Columns: ``image`` and ``conditioning_image`` (the defaults of diffusers' ``train_controlnet.py``),
``text``, ``file_name`` (relative to the input), ``annotator``, ``width`` and ``height``. With
several annotators, ``conditioning_image`` holds the first one's map and each annotator also gets a
column named after its id. Annotators that find structured data add the column of their data kind
(``keypoints`` for pose, ``segmentation`` for label maps), suffixed ``_<id>`` when several
annotators share a kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from annotators.data import DataKind

__all__ = [
    "BUILD_FILE",
    "DATA_DIR",
    "LOCK_FILE",
    "SKIPPED_FILE",
    "DataColumn",
    "Layout",
    "shard_paths",
]

BUILD_FILE = "build.json"
SKIPPED_FILE = "skipped.jsonl"
CARD_FILE = "README.md"
LOCK_FILE = ".cn-annotate.lock"
DATA_DIR = "data"
SHARD_PREFIX = "train-"
#: what a build writes into OUT_DIR (and ``--overwrite`` may remove)
OWN_ENTRIES = (CARD_FILE, BUILD_FILE, SKIPPED_FILE)

IMAGE_FEATURE = {"_type": "Image"}
_VALUE_FEATURES = {
    "text": {"dtype": "string", "_type": "Value"},
    "file_name": {"dtype": "string", "_type": "Value"},
    "annotator": {"dtype": "string", "_type": "Value"},
    "width": {"dtype": "int32", "_type": "Value"},
    "height": {"dtype": "int32", "_type": "Value"},
}


@dataclass(frozen=True)
class DataColumn:
    """The column holding one annotator's structured data, and the kind that encodes it."""

    name: str
    annotator: str
    kind: DataKind


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}.parquet"


def shard_index(path: Path) -> int:
    return int(path.name.removeprefix(SHARD_PREFIX).removesuffix(".parquet"))


def shard_paths(output: Path) -> list[Path]:
    """The finished shards of a dataset folder, in order."""
    return sorted((output / DATA_DIR).glob(f"{SHARD_PREFIX}*.parquet"))


def temporary_shard_paths(output: Path) -> list[Path]:
    """Shards being written (hidden, renamed into place when complete)."""
    return sorted((output / DATA_DIR).glob(f".{SHARD_PREFIX}*.tmp"))


@dataclass(frozen=True)
class Layout:
    """The columns of a dataset made by ``annotators`` (ids, in order) with these data kinds."""

    annotators: tuple[str, ...]
    data_columns: tuple[DataColumn, ...]

    @classmethod
    def of(cls, annotators: list[tuple[str, DataKind | None]]) -> Layout:
        """The layout for annotator ids and the data kind each declares (None: maps only)."""
        finders = [(name, kind) for name, kind in annotators if kind is not None]
        columns = []
        for name, kind in finders:
            shared = sum(1 for _, other in finders if other.column == kind.column) > 1
            columns.append(DataColumn(f"{kind.column}_{name}" if shared else kind.column, name, kind))
        return cls(tuple(name for name, _ in annotators), tuple(columns))

    @property
    def condition_columns(self) -> list[str]:
        """``conditioning_image``, plus one column per annotator id when there are several."""
        return ["conditioning_image"] + (list(self.annotators) if len(self.annotators) > 1 else [])

    def features(self) -> dict[str, dict[str, Any]]:
        """The columns as ``datasets`` feature dicts (what ``Features.to_dict()`` gives)."""
        columns: dict[str, dict[str, Any]] = {"image": IMAGE_FEATURE}
        columns.update({name: IMAGE_FEATURE for name in self.condition_columns})
        columns.update(_VALUE_FEATURES)
        columns.update({column.name: column.kind.feature() for column in self.data_columns})
        return columns

    @property
    def columns(self) -> list[str]:
        return list(self.features())

    def arrow_schema(self) -> pa.Schema:
        """The Parquet schema, with the ``huggingface`` metadata through which ``datasets`` sees Image
        features. Written by hand, equal to ``datasets.Features(...).arrow_schema``, so that building
        does not import ``datasets`` (a second of start-up and about 100 MB per process)."""
        import pyarrow as pa

        image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        scalar = {"string": pa.string(), "int32": pa.int32()}
        fields = []
        for name, feature in self.features().items():
            if feature == IMAGE_FEATURE:
                fields.append(pa.field(name, image))
            elif feature.get("_type") == "Value":
                fields.append(pa.field(name, scalar[feature["dtype"]]))
            else:
                raise ValueError(f"column {name}: unsupported feature {feature}")
        return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": self.features()}})})
