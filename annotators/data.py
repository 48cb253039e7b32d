"""Kinds of structured data that annotators find, and their codecs.

An annotator that finds more than a map (keypoints, a label map, ...) declares ``data_kind``: an
instance of a :class:`DataKind`. The kind owns everything a dataset needs to know about that data:
the column it is stored in, its Arrow type and ``datasets`` feature, how it is encoded and decoded,
which filters apply to it (``--min-keypoints`` belongs to ``pose``), and what the dataset card says
about it. The builder, the card and the CLI know data only through this interface, so a plug-in
can bring a kind of its own.

Built in: :data:`POSE` (OpenPose JSON) and :class:`SegmentationKind` (a label map, stored as a
lossless PNG, with the label set's class names and palette).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np

from annotators.base import Annotation, AnnotatorConfig, param

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "POSE",
    "DataKind",
    "ImageDataKind",
    "JsonDataKind",
    "PoseFilters",
    "PoseKind",
    "SegmentationKind",
    "count_body_keypoints",
]


class DataKind:
    """The codec of one kind of structured data. Subclasses set ``name``, ``column`` and
    ``description`` and implement the encoding; filters and card statistics are optional."""

    name: ClassVar[str]
    #: column name in a dataset; with several annotators of one kind, ``<column>_<annotator id>``
    column: ClassVar[str]
    #: what the column holds, for the dataset card
    description: ClassVar[str]
    #: a config dataclass of the filters that apply to this kind (None: no filters)
    Filters: ClassVar[type[AnnotatorConfig] | None] = None

    def feature(self) -> dict[str, Any]:
        """The column as a ``datasets`` feature dict (what ``Features.to_dict()`` gives)."""
        raise NotImplementedError

    def arrow_array(self, values: Sequence[Any]) -> pa.Array:
        """Encoded values (:meth:`encode`'s results, None for missing) as one Arrow column."""
        raise NotImplementedError

    def encode(self, data: Any) -> Any:
        """The annotator's data as the value stored in one row."""
        raise NotImplementedError

    def decode(self, value: Any) -> Any:
        """A stored value back to the annotator's data."""
        raise NotImplementedError

    def reject(self, data: Any, filters: AnnotatorConfig | None) -> str | None:
        """Why a row with this data is left out under ``filters``, or None to keep it."""
        return None

    def tally(self, data: Any) -> Counter[str]:
        """Counts that one row adds to the card's statistics (summed over rows)."""
        return Counter()

    def card_lines(self, totals: Counter[str], rows: int) -> list[str]:
        """Markdown lines for the card's contents section, from the summed tallies."""
        return []

    def filter_lines(self, filters: AnnotatorConfig) -> list[str]:
        """Markdown lines saying how the filters shaped the dataset."""
        return []


class JsonDataKind(DataKind):
    """Data stored as a JSON string (numpy scalars and arrays become numbers and lists)."""

    def feature(self) -> dict[str, Any]:
        return {"dtype": "string", "_type": "Value"}

    def arrow_array(self, values: Sequence[Any]) -> pa.Array:
        import pyarrow as pa

        return pa.array(values, pa.string())

    def encode(self, data: Any) -> str | None:
        return None if data is None else json.dumps(data, default=_json_value)

    def decode(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class ImageDataKind(DataKind):
    """Data stored as an image column (``datasets`` ``Image`` feature) of lossless PNG bytes."""

    def feature(self) -> dict[str, Any]:
        return {"_type": "Image"}

    def arrow_array(self, values: Sequence[Any]) -> pa.Array:
        import pyarrow as pa

        return pa.StructArray.from_arrays(
            [pa.array(values, pa.binary()), pa.nulls(len(values), pa.string())], names=["bytes", "path"]
        )


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def count_body_keypoints(data: dict[str, Any] | None) -> int:
    """Body keypoints found in an OpenPose JSON dict (confidence > 0), summed over people."""
    total = 0
    for person in (data or {}).get("people") or []:
        values = person.get("pose_keypoints_2d") or []
        total += sum(1 for c in values[2::3] if c > 0)
    return total


@dataclass(frozen=True)
class PoseFilters(AnnotatorConfig):
    min_keypoints: int = param(0, "skip images with fewer body keypoints than this (pose annotators)", ge=0)


class PoseKind(JsonDataKind):
    """OpenPose JSON: ``people[].pose_keypoints_2d`` (and hands, face), ``canvas_width``, ``canvas_height``."""

    name = "pose"
    column = "keypoints"
    description = "OpenPose JSON (`people`, `canvas_width`, `canvas_height`)"
    Filters = PoseFilters

    def reject(self, data: Any, filters: AnnotatorConfig | None) -> str | None:
        if not isinstance(filters, PoseFilters) or not filters.min_keypoints:
            return None
        found = count_body_keypoints(data)
        if found < filters.min_keypoints:
            return f"{found} body keypoints found, fewer than --min-keypoints {filters.min_keypoints}"
        return None

    def tally(self, data: Any) -> Counter[str]:
        return Counter({"no person": 0 if (data or {}).get("people") else 1})

    def card_lines(self, totals: Counter[str], rows: int) -> list[str]:
        return [f"- Images with no person found: {totals['no person']}"]

    def filter_lines(self, filters: AnnotatorConfig) -> list[str]:
        if isinstance(filters, PoseFilters) and filters.min_keypoints:
            return [f"- Images with fewer than {filters.min_keypoints} body keypoints were skipped"]
        return []


POSE = PoseKind()


@dataclass(frozen=True, eq=False)
class SegmentationKind(ImageDataKind):
    """A label map (HxW class indices) of one label set, stored as a lossless PNG: 8-bit when every
    label fits, else 16-bit. The label set's class names and palette travel with the kind, so the card
    can name the classes and a reader can colour the labels as the annotator did.

    The card's class-frequency table gives, per class, the images it appears in and its share of all
    labelled pixels."""

    label_set: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = field(repr=False)

    name: ClassVar[str] = "segmentation"
    column: ClassVar[str] = "segmentation"

    def __post_init__(self) -> None:
        if len(self.palette) < len(self.classes):
            raise ValueError(f"{self.label_set}: {len(self.classes)} classes but {len(self.palette)} palette colours")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{self.label_set}: class names repeat, so the card could not tell them apart")

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"label map (PNG, one {self.label_set} class index per pixel; class names and palette below)"

    @property
    def depth(self) -> type[np.unsignedinteger]:
        """The PNG sample type: uint8 up to 256 classes, else uint16."""
        return np.uint8 if len(self.classes) <= 256 else np.uint16

    def encode(self, data: Any) -> bytes:
        labels = np.asarray(data)
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(self.classes):
            raise ValueError(
                f"expected an HxW integer label map with labels in [0, {len(self.classes)}), got {labels.dtype} of shape {labels.shape}"
            )
        ok, buffer = cv2.imencode(".png", np.ascontiguousarray(labels.astype(self.depth)))
        if not ok:
            raise ValueError("PNG encoding of a label map failed")
        return buffer.tobytes()

    def decode(self, value: Any) -> np.ndarray:
        raw = value["bytes"] if isinstance(value, dict) else value
        labels = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
        if labels is None or labels.ndim != 2:
            raise ValueError("not a single-channel PNG label map")
        return labels

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """The labels drawn in the label set's palette (HxWx3 uint8 RGB)."""
        return np.asarray(self.palette, np.uint8)[labels]

    def annotation(self, labels: np.ndarray) -> Annotation:
        """A label map as an annotator returns it: drawn flat in the palette, the labels as its data."""
        return Annotation(self.colorize(labels), labels)

    def tally(self, data: Any) -> Counter[str]:
        """``images:<class>`` (1 if present) and ``pixels:<class>`` counts for one label map."""
        present, counts = np.unique(np.asarray(data), return_counts=True)
        totals: Counter[str] = Counter()
        for label, count in zip(present.tolist(), counts.tolist()):
            totals[f"images:{self.classes[label]}"] = 1
            totals[f"pixels:{self.classes[label]}"] = count
        return totals

    def card_lines(self, totals: Counter[str], rows: int) -> list[str]:
        pixels = sum(totals[f"pixels:{name}"] for name in self.classes)
        found = sum(1 for name in self.classes if totals[f"images:{name}"])
        lines = [
            f"- Label set: {self.label_set}, {len(self.classes)} classes, {found} of them found. Per class: its index, "
            "name and palette colour (RGB), the images it appears in and its share of all labelled pixels:",
            "",
            "  | index | class | RGB | images | pixels |",
            "  |---|---|---|---|---|",
        ]
        for index, name in enumerate(self.classes):
            red, green, blue = self.palette[index]
            share = f"{100 * totals[f'pixels:{name}'] / pixels:.2f}%" if pixels else "0.00%"
            lines.append(f"  | {index} | {name} | {red},{green},{blue} | {totals[f'images:{name}']} | {share} |")
        return lines
