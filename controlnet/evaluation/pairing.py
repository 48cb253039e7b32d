"""Pairing generated images with the conditions they were made from, and finding the annotator
(id and output parameters) that made those conditions.

Two layouts of a samples folder:
- written by ``cn-sample``: ``manifest.jsonl`` names each sample's dataset row (or condition image
  in the folder), prompt, seed and ControlNets;
- any other folder of images named by the dataset rows' ``file_name`` (its path without suffix, or
  its bare stem when that is unique in the dataset), any image suffix, one sample per row.

The annotator's parameters come from the dataset's ``build.json``; for samples made from condition
images, from the manifest; else they are the annotator's defaults, and the report says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import annotators
from controlnet.dataset.read import ConditionColumns, DatasetReadError, condition_columns, load_build, load_rows
from controlnet.dataset.sources import IMAGE_SUFFIXES
from controlnet.evaluation.config import EvalConfig
from controlnet.manifest import MANIFEST_FILE, ConditionRecord, ManifestEntry, ManifestError, read_manifest

__all__ = ["EvalError", "Pair", "Plan", "plan_evaluation"]


class EvalError(ValueError):
    """An evaluation that cannot run as asked, with a one-line reason."""


@dataclass(frozen=True)
class Pair:
    """One generated image and where its condition is."""

    sample: str  # path relative to the samples folder
    row: int | None = None  # dataset row
    condition_image: str | None = None  # condition image in the samples folder (cn-sample --image)
    prompt: str | None = None  # None: the row's caption
    info: dict[str, Any] = field(default_factory=dict)  # what the manifest records (seed, guidance, ...)


@dataclass
class Plan:
    annotator: str
    params: dict[str, Any]
    params_from: str  # "build.json", "manifest" or "defaults"
    dataset: str | None
    split: str
    rows: Any  # datasets.Dataset, or None without a dataset
    columns: ConditionColumns | None
    pairs: list[Pair]
    skipped: list[dict[str, str]]
    notes: list[str]


def _chosen_condition(entry: ManifestEntry, annotator: str | None) -> ConditionRecord | None:
    """The entry's condition made by ``annotator``, else its first one with a known annotator, else its first."""
    if not entry.conditions:
        return None
    if annotator is not None:
        return next((c for c in entry.conditions if c.annotator == annotator), entry.conditions[0])
    return next((c for c in entry.conditions if c.annotator), entry.conditions[0])


def _manifest_pairs(entries: list[ManifestEntry], annotator: str, rows: Any) -> tuple[list[Pair], list[dict[str, str]]]:
    names = rows["file_name"] if rows is not None and "file_name" in rows.column_names else None
    pairs, skipped = [], []
    for entry in entries:
        record = _chosen_condition(entry, annotator)
        info = {"seed": entry.seed, "index": entry.index, "guidance": entry.guidance, "steps": entry.steps}
        if entry.row is not None and rows is not None:
            if not 0 <= entry.row < len(rows):
                skipped.append({"sample": entry.sample, "reason": f"row {entry.row} is not in the dataset ({len(rows)} rows)"})
                continue
            if names is not None and entry.file_name is not None and names[entry.row] != entry.file_name:
                skipped.append({"sample": entry.sample, "reason": f"row {entry.row} is {names[entry.row]}, the manifest says {entry.file_name}: another dataset?"})
                continue
            pairs.append(Pair(entry.sample, row=entry.row, prompt=entry.prompt, info={**info, "file_name": entry.file_name}))
        elif record is not None and record.image is not None:
            pairs.append(Pair(entry.sample, condition_image=record.image, prompt=entry.prompt, info=info))
        else:
            skipped.append({"sample": entry.sample, "reason": "the manifest names neither a dataset row nor a condition image"})
    return pairs, skipped


def _folder_pairs(folder: Path, rows: Any) -> tuple[list[Pair], list[dict[str, str]]]:
    """Images under ``folder`` matched to rows by ``file_name`` without its suffix (or by bare stem,
    when unique among the rows)."""
    if "file_name" not in rows.column_names:
        raise EvalError("the dataset has no file_name column to pair samples with; sample it with cn-sample --dataset")
    by_path: dict[str, int] = {}
    stems: Counter[str] = Counter()
    by_stem: dict[str, int] = {}
    names = rows["file_name"]
    for index, name in enumerate(names):
        path = PurePosixPath(str(name))
        by_path.setdefault(path.with_suffix("").as_posix(), index)
        stems[path.stem] += 1
        by_stem[path.stem] = index
    pairs, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(folder).as_posix()
        key = PurePosixPath(relative).with_suffix("").as_posix()
        row = by_path.get(key)
        if row is None and stems[PurePosixPath(key).name] == 1:
            row = by_stem[PurePosixPath(key).name]
        if row is None:
            skipped.append({"sample": relative, "reason": "no dataset row has this file name"})
        else:
            pairs.append(Pair(relative, row=row, info={"file_name": names[row]}))
    return pairs, skipped


def plan_evaluation(config: EvalConfig) -> Plan:
    """What to score: the annotator and its parameters, the dataset rows, and the sample pairs."""
    folder = config.samples
    if not folder.is_dir():
        raise EvalError(f"{folder}: not a folder of samples")
    try:
        entries = read_manifest(folder)
    except ManifestError as err:
        raise EvalError(str(err)) from None
    if entries is not None and not entries:
        raise EvalError(f"{folder / MANIFEST_FILE}: the manifest lists no samples")
    dataset = config.dataset or next((e.dataset for e in entries or [] if e.dataset), None)
    if entries is None and dataset is None:
        raise EvalError(f"{folder} has no {MANIFEST_FILE}; give --dataset to pair its images with the dataset's rows by file name")
    split = config.split or next((e.split for e in entries or [] if e.split), None) or "train"
    notes: list[str] = []
    try:
        build = load_build(dataset, config.revision) if dataset else None
        rows = load_rows(dataset, split, config.revision) if dataset else None
    except DatasetReadError as err:
        raise EvalError(str(err)) from None
    built_by = list(build["annotators"]) if build else []

    recorded = [_chosen_condition(e, config.annotator) for e in entries or []]
    annotator = config.annotator or next((c.annotator for c in recorded if c is not None and c.annotator), None)
    annotator = annotator or (built_by[0] if built_by else None)
    if annotator is None:
        raise EvalError("no build.json or manifest says which annotator made the conditions; name it with --annotator")
    if annotator not in annotators.names():
        raise EvalError(str(annotators.UnknownAnnotatorError(annotator)))

    columns = None
    if rows is not None:
        try:
            if built_by:
                columns = condition_columns(built_by, annotator)
            else:  # a dataset from elsewhere: the usual column names, if it has them
                kind = annotators.get_class(annotator).data_kind
                data = kind.column if kind is not None and kind.column in rows.column_names else None
                columns = ConditionColumns(annotator, annotator if annotator in rows.column_names else "conditioning_image", data, kind)
        except DatasetReadError as err:
            raise EvalError(str(err)) from None
        if columns.map not in rows.column_names:
            raise EvalError(f"dataset {dataset} has no condition column {columns.map!r}")

    if build and annotator in build["annotators"]:
        params, params_from = dict(build["annotators"][annotator]), "build.json"
    else:
        params = next((c.params for c in recorded if c is not None and c.annotator == annotator and c.params is not None), None)
        params_from = "manifest" if params is not None else "defaults"
        if params is None:
            params = {}
            notes.append(f"{annotator} ran with its default parameters: neither a build.json nor the manifest records those that made the conditions")

    if entries is not None:
        pairs, skipped = _manifest_pairs(entries, annotator, rows)
    else:
        pairs, skipped = _folder_pairs(folder, rows)
    if config.limit is not None:
        pairs = pairs[: config.limit]
    return Plan(annotator, params, params_from, dataset, split, rows, columns, pairs, skipped, notes)
