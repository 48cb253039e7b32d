"""Writing rows: atomic Parquet shards, and the skip log.

A shard is written as a hidden temporary file in row groups. It is renamed into place once it holds
``shard_size`` rows (or at the end), and only after it is closed, flushed to disk and read back
(its footer and row count); the folder is then flushed too, so the rename survives a power cut. A
write that fails (a full disk) leaves the writer failed: the open shard is deleted, never renamed,
and its rows are built again by the next run. Only renamed shards count as finished.

A row whose values Arrow cannot store (found when its row group is converted) is handed back in
:attr:`ShardWriter.rejected` instead of failing the row group, so one bad row costs only itself.
Skipped inputs go to ``skipped.jsonl``, one line written and flushed per record.

:func:`write_shard` is a whole shard written by another process than the builder's (a local
worker, a Ray task), which reports a :class:`ShardSummary` instead of its rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from controlnet.dataset.layout import DATA_DIR, Layout, shard_name
from controlnet.dataset.pipeline import Row, Skip, skip_kind
from controlnet.dataset.resume import PREVIEW_ROWS

__all__ = ["ShardSummary", "ShardWriter", "SkipLog", "fsync_folder", "prefer_system_allocator", "preview_of", "write_shard"]

log = logging.getLogger("controlnet.dataset")


def prefer_system_allocator() -> None:
    """Have Arrow allocate from the C library (glibc's malloc) rather than its default, mimalloc,
    unless ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise. Arrow reads that variable once, when it is
    first imported, so this only helps before then: ``cn-annotate`` calls it as it starts.

    Why: glibc keeps the memory that Arrow frees after each row group (megabytes) for the next
    images' arrays, where otherwise it hands the top of its heap back to the system and takes a page
    fault for each page of every image again. Measured on 1500 photos (docs/throughput.md): 50
    thousand page faults instead of 330 thousand with one worker, about 4% faster, and lower peak
    memory. Parquet's writer allocates from the default pool whatever pool it is given, so the
    default itself has to change."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


class ShardWriter:
    """Appends rows to ``data/train-NNNNN.parquet`` shards (see the module docstring)."""

    ROW_GROUP = 100  # rows buffered in memory; also a good page size for the Hub's viewer
    ROW_GROUP_BYTES = 128 * 2**20  # ... or fewer when they are large, to bound memory (and stay far below Arrow's 2 GiB per binary array)
    # Rows are turned into Arrow this many at a time: the rows of a whole row group, held among the
    # transient buffers of the images decoded meanwhile, fragmented the heap. A worker writing camera
    # photos grew by a third from 200 to 2000 of them.
    CONVERTED = 10

    def __init__(self, output: Path, layout: Layout, shard_size: int, next_index: int, on_shard: Callable[[], None] | None = None) -> None:
        self.data_dir = output / DATA_DIR
        self.layout = layout
        self.schema = layout.arrow_schema()
        self.annotator = ",".join(layout.annotators)
        self.shard_size = shard_size
        self.index = next_index
        self.on_shard = on_shard
        self.buffer: list[Row] = []  # not yet in Arrow
        self.tables: list[Any] = []  # of the row group, in Arrow
        self.buffered_rows = 0
        self.buffered_bytes = 0
        self.rows_in_shard = 0
        self.rows_committed = 0  # rows in the shards this writer renamed into place
        self.handle: BinaryIO | None = None
        self.writer: Any = None
        self.failed = False  # a write of the open shard failed: it is never committed
        self.rejected: list[tuple[Row, str]] = []  # rows that cannot be stored, with the reason

    def _tmp_path(self) -> Path:
        return self.data_dir / f".{shard_name(self.index)}.tmp"

    def add(self, row: Row) -> None:
        self.buffer.append(row)
        self.buffered_rows += 1
        self.buffered_bytes += len(row.image) + sum(len(m) for m in row.maps)
        if len(self.buffer) >= self.CONVERTED:
            self._convert()
        full = self.buffered_rows >= self.ROW_GROUP or self.buffered_bytes >= self.ROW_GROUP_BYTES
        if full or self.rows_in_shard + self.buffered_rows >= self.shard_size:
            self._flush()
        if self.rows_in_shard >= self.shard_size:
            self._finish_shard()

    def _table(self, rows: list[Row]) -> Any:
        import pyarrow as pa

        file_names = [r.file_name for r in rows]

        def image_column(data: list[bytes], paths: list[str] | None) -> Any:
            # Built from whole arrays: converting a dict per row costs more than the copy of the bytes.
            path_array = pa.array(paths, pa.string()) if paths is not None else pa.nulls(len(data), pa.string())
            return pa.StructArray.from_arrays([pa.array(data, pa.binary()), path_array], names=["bytes", "path"])

        columns: dict[str, Any] = {"image": image_column([r.image for r in rows], [r.image_name for r in rows])}
        for position, name in enumerate(self.layout.condition_columns):
            source = 0 if position == 0 else position - 1
            columns[name] = image_column([r.maps[source] for r in rows], None)
        columns["text"] = [r.caption for r in rows]
        columns["file_name"] = file_names
        columns["annotator"] = [self.annotator] * len(rows)
        columns["width"] = [r.width for r in rows]
        columns["height"] = [r.height for r in rows]
        for position, column in enumerate(self.layout.data_columns):
            columns[column.name] = column.kind.arrow_array([r.data[position] for r in rows])
        return pa.Table.from_pydict(columns, schema=self.schema)

    def _storable(self, rows: list[Row]) -> Any:
        """The table of ``rows``; rows that cannot be converted are moved to :attr:`rejected`."""
        try:
            return self._table(rows)
        except Exception:  # Arrow raises several types (ArrowInvalid, UnicodeEncodeError, TypeError, OverflowError)
            pass
        kept = []
        for row in rows:  # only after a failure: find the rows at fault, keep the others
            try:
                self._table([row])
            except Exception as err:
                message = " ".join(str(err).split())[:200]
                self.rejected.append((row, f"unexpected error (row cannot be stored: {type(err).__name__}: {message})"))
            else:
                kept.append(row)
        return self._table(kept) if kept else None

    def _convert(self) -> None:
        if not self.buffer:
            return
        rows, self.buffer = self.buffer, []
        table = self._storable(rows)
        if table is not None:
            self.tables.append(table)

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.failed:
            return
        self._convert()
        tables, self.tables, self.buffered_rows, self.buffered_bytes = self.tables, [], 0, 0
        if not tables:
            return
        table = pa.concat_tables(tables)  # chunked columns: still one row group
        try:
            if self.writer is None:
                # A file object of ours: the shard's bytes go through Python's os-level writes, so a
                # full disk surfaces as OSError (ENOSPC) here, and the file can be synced before the rename.
                self.handle = open(self._tmp_path(), "wb")  # noqa: SIM115 (closed in _finish_shard or abort)
                # The encoded images neither compress nor repeat: no compression, dictionary or statistics for them.
                small = ["text", "file_name", "annotator", "width", "height"]
                self.writer = pq.ParquetWriter(
                    self.handle,
                    self.schema,
                    compression={name: "snappy" for name in small + [c.name for c in self.layout.data_columns]},
                    use_dictionary=["text", "file_name", "annotator"],
                    write_statistics=small,
                )
            self.writer.write_table(table)
        except BaseException:
            self.failed = True
            raise
        self.rows_in_shard += table.num_rows

    def _finish_shard(self) -> None:
        import pyarrow.parquet as pq

        self._flush()
        if self.writer is None or self.failed:
            return
        tmp = self._tmp_path()
        try:
            self.writer.close()
            self.writer = None
            assert self.handle is not None
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.handle = None
            rows = pq.read_metadata(tmp).num_rows  # the footer is the last thing written: it reads, so the rest was written
            if rows != self.rows_in_shard:
                raise OSError(f"{tmp.name} holds {rows} rows instead of {self.rows_in_shard} once written")
            os.replace(tmp, self.data_dir / shard_name(self.index))
        except BaseException:
            self.failed = True
            raise
        fsync_folder(self.data_dir)
        self.index += 1
        self.rows_committed += self.rows_in_shard
        self.rows_in_shard = 0
        if self.on_shard is not None:
            self.on_shard()

    def close(self) -> None:
        """Finish the open shard: every row in it is complete. After a failed write, delete it instead."""
        if self.failed:
            self.abort()
        else:
            self._finish_shard()

    def abort(self) -> None:
        """Delete the open shard (its rows are built again by the next run)."""
        self.failed = True
        self.buffer, self.tables, self.buffered_rows, self.buffered_bytes = [], [], 0, 0
        for release in (self.writer, self.handle):
            if release is not None:
                try:
                    release.close()
                except Exception:  # it is being thrown away; a full disk may refuse its last bytes
                    pass
        self.writer = self.handle = None
        try:
            self._tmp_path().unlink(missing_ok=True)
        except OSError:
            pass  # removed by the next run, which clears temporary shards before it starts


@dataclass
class ShardSummary:
    """What the writer of a shard reports to the builder: its rows' count and card statistics, and
    its skips (``rejected``: rows the writer could not store)."""

    index: int
    rows: int = 0
    skips: list[Skip] = field(default_factory=list)
    rejected: list[Skip] = field(default_factory=list)
    tallies: list[Counter[str]] = field(default_factory=list)  # one per data column of the layout
    preview: list[dict[str, Any]] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)  # the Ray nodes its pieces ran on


def preview_of(row: Row) -> dict[str, Any]:
    return {"file_name": row.file_name, "text": row.caption, "width": row.width, "height": row.height}


def write_shard(
    output: Path,
    layout: Layout,
    index: int,
    inputs: int,
    pieces: Iterable[list[Row | Skip]],
    after_piece: Callable[[list[Row | Skip]], None] | None = None,
) -> ShardSummary:
    """Write shard ``index`` from the results of its ``inputs`` inputs, piece by piece, in order;
    ``after_piece`` is called once a piece's rows are in the writer. Memory holds one piece and one
    row group, never the whole shard. On an error the open shard is deleted."""
    summary = ShardSummary(index, tallies=[Counter() for _ in layout.data_columns])
    writer = ShardWriter(output, layout, max(1, inputs), index)  # at most `inputs` rows: one shard
    try:
        for piece in pieces:
            for result in piece:
                if isinstance(result, Skip):
                    summary.skips.append(result)
                    continue
                writer.add(result)
                summary.rows += 1
                for tally, found in zip(summary.tallies, result.tallies):
                    tally.update(found)
                if len(summary.preview) < PREVIEW_ROWS:
                    summary.preview.append(preview_of(result))
            if after_piece is not None:
                after_piece(piece)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    for row, reason in writer.rejected:  # rows the writer could not store are skips, as in the builder's own writer
        summary.rows -= 1
        for tally, found in zip(summary.tallies, row.tallies):
            tally.subtract(found)
        summary.preview = [shown for shown in summary.preview if shown["file_name"] != row.file_name]
        summary.rejected.append(Skip(row.file_name, None, reason))
    return summary


class SkipLog:
    """``skipped.jsonl``: appended and flushed per record. A line cut short by a crash is dropped
    when the log is opened again, so that input is simply retried; so is a line that does not
    read as a record (a damaged file), with a notice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.exists():
            raw = path.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            if len(complete) != len(raw):
                path.write_bytes(complete)
            for number, line in enumerate(complete.split(b"\n"), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8"))
                    if not isinstance(record, dict) or not isinstance(record.get("file_name"), str) or not isinstance(record.get("reason"), str):
                        raise ValueError("not a skip record")
                except (ValueError, RecursionError):  # json's errors are ValueErrors
                    log.warning("%s line %d is not a skip record and is ignored: that input is tried again", path.name, number)
                    continue
                self.records.append(record)
        self.handle = path.open("a", encoding="utf-8")

    def keys(self) -> set[str]:
        return {record["file_name"] for record in self.records}

    def kinds(self) -> Counter[str]:
        return Counter(skip_kind(record["reason"]) for record in self.records)

    def add(self, skip: Skip) -> None:
        # file_name is relative to the input; the local path is left out, as the log is published with the dataset
        self.handle.write(json.dumps({"file_name": skip.file_name, "reason": skip.reason}) + "\n")
        self.handle.flush()

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError:  # what a full disk did not take is simply tried again next time
            pass
