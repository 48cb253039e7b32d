"""Starting or resuming a build in an output folder: the identity check, and what is already done.

A folder is new, empty, or a build of the same identity (``build.json``); anything else is refused
unless ``overwrite``, which also replaces a build whose ``build.json`` is damaged. Resuming reads
the ``file_name``s of the finished (renamed) shards, so no input is done twice or lost, and the
statistics the card shows. A shard that does not read is reported, deleted and built again, never
trusted; a ``file_name`` stored twice (a folder written by two builds at once, before the lock)
refuses the build.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlnet.dataset.config import IDENTITY_ADDED, BuildError
from controlnet.dataset.layout import (
    BUILD_FILE,
    DATA_DIR,
    LOCK_FILE,
    OWN_ENTRIES,
    SHARD_PREFIX,
    Layout,
    shard_index,
    shard_paths,
    temporary_shard_paths,
)

__all__ = ["FinishedState", "finished_state", "prepare_output"]

PREVIEW_ROWS = 5

log = logging.getLogger("controlnet.dataset")


def _describe_change(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in list(dict.fromkeys([*before, *after])):
        old, new = before.get(key, "(none)"), after.get(key, "(none)")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _describe_change(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


#: entries of a folder that do not make it a dataset: the lock, and build.json while it is written
_NOT_CONTENT = frozenset({LOCK_FILE, f".{BUILD_FILE}.tmp"})


def _clear(output: Path) -> None:
    """Remove what a build wrote (and only that)."""
    for name in OWN_ENTRIES:
        (output / name).unlink(missing_ok=True)
    data = output / DATA_DIR
    if data.is_dir():
        for path in data.iterdir():
            if path.name.startswith((SHARD_PREFIX, f".{SHARD_PREFIX}")):
                path.unlink()
        if not any(data.iterdir()):
            data.rmdir()


def check_output(output: Path) -> None:
    """Refuse an ``output`` that is a file, or a folder holding something other than a dataset.

    Checked before the folder is locked, so that no lock file is left in someone else's folder, and
    again once it is locked (by :func:`prepare_output`): a folder with a lock file is a build's,
    maybe one in progress that has not written its ``build.json`` yet."""
    if output.exists() and not output.is_dir():
        raise BuildError(f"{output} is a file; the output of a dataset build is a folder")
    if not output.is_dir():
        return
    # Listed before the lock is looked for: a build creates its lock file before anything else in the
    # folder and never deletes it, so whatever a build that starts meanwhile (the same command run
    # twice at once) has put in the listing, its lock is found below.
    entries = list(output.iterdir())
    if (output / LOCK_FILE).exists():
        return
    if entries and not (output / BUILD_FILE).is_file():
        raise BuildError(f"{output} is not empty and holds no cn-annotate dataset ({BUILD_FILE} is missing); choose a new or empty folder")


def _read_identity(build_file: Path) -> dict[str, Any]:
    try:
        previous = json.loads(build_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or bytes that are not UTF-8
        message = " ".join(str(err).split())[:200]
        raise BuildError(f"{build_file} cannot be read ({message}); use --overwrite to start again") from None
    if not isinstance(previous, dict):
        raise BuildError(f"{build_file} cannot be read (it is not a build record); use --overwrite to start again")
    return previous


def prepare_output(output: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Check that ``output`` is new, empty, or a build of the same identity (refused otherwise,
    unless ``overwrite``), and record the identity there."""
    build_file = output / BUILD_FILE
    try:
        if output.is_dir() and any(p.name not in _NOT_CONTENT for p in output.iterdir()):
            if not build_file.is_file():
                raise BuildError(f"{output} is not empty and holds no cn-annotate dataset ({BUILD_FILE} is missing); choose a new or empty folder")
            if overwrite:  # whatever build.json says, even if it no longer reads
                _clear(output)
            else:
                previous = {**IDENTITY_ADDED, **_read_identity(build_file)}
                if previous != identity:
                    changes = "; ".join(_describe_change(previous, identity))
                    raise BuildError(f"{output} was built with other settings ({changes}). Use --overwrite to replace it, or choose another output folder")
        # build.json first: a folder is never left with data/ and no record of what it holds
        tmp = output / f".{BUILD_FILE}.tmp"
        tmp.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, build_file)
        (output / DATA_DIR).mkdir(exist_ok=True)
    except OSError as err:  # a read-only folder, a full disk
        raise BuildError(f"cannot write to {output} ({err.strerror or err})") from None


@dataclass
class FinishedState:
    """What the finished shards hold: file names, rows, the data columns' summed card statistics,
    the next shard's index and a few preview rows."""

    done: set[str] = field(default_factory=set)
    rows: int = 0
    tallies: dict[str, Counter[str]] = field(default_factory=dict)
    next_index: int = 0
    preview: list[dict[str, Any]] = field(default_factory=list)


def _read_shard(path: Path, columns: list[str]) -> Any:
    """The ``columns`` of a finished shard, or None (with a notice, and the shard deleted) when it
    does not read in full: its rows are then built again."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=columns)
        expected = pq.read_metadata(path).num_rows
        if table.num_rows != expected:
            raise ValueError(f"{table.num_rows} rows read of {expected}")
    except Exception as err:  # Arrow raises several types for damaged files (ArrowInvalid, OSError)
        message = " ".join(str(err).split())[:200]
        log.warning("%s/%s cannot be read (%s): it is deleted and its rows are built again", DATA_DIR, path.name, message)
        path.unlink()
        return None
    return table


def finished_state(output: Path, layout: Layout) -> FinishedState:
    """Read the finished shards; temporary files of an interrupted shard are removed."""
    for stale in temporary_shard_paths(output):
        stale.unlink()
    state = FinishedState(tallies={column.name: Counter() for column in layout.data_columns})
    preview_columns = ["file_name", "text", "width", "height"]
    stored_in: dict[str, str] = {}
    for path in shard_paths(output):
        table = _read_shard(path, [*preview_columns, *(c.name for c in layout.data_columns)])
        if table is None:
            continue
        names = table.column("file_name").to_pylist()
        for name in names:
            if name in stored_in:
                raise BuildError(
                    f"{output} stores {name!r} twice ({stored_in[name]} and {path.name}), as when two builds write into one folder at once; "
                    "rebuild it with --overwrite"
                )
            stored_in[name] = path.name
        state.done.update(names)
        state.rows += len(names)
        for column in layout.data_columns:
            for value in table.column(column.name).to_pylist():
                state.tallies[column.name].update(column.kind.tally(column.kind.decode(value)))
        if len(state.preview) < PREVIEW_ROWS:
            state.preview += table.select(preview_columns).slice(0, PREVIEW_ROWS - len(state.preview)).to_pylist()
        state.next_index = max(state.next_index, shard_index(path) + 1)
    return state
