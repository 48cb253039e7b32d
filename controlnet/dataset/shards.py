"""Writing rows: atomic Parquet shards, and the skip log.

A shard is written as a hidden temporary file in row groups and renamed into place once it holds
``shard_size`` rows (or at the end), after it is flushed to disk; only renamed shards count as
finished. Skipped inputs go to ``skipped.jsonl``, one flushed line each.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controlnet.dataset.layout import DATA_DIR, Layout, shard_name
from controlnet.dataset.pipeline import Row, Skip, skip_kind

__all__ = ["ShardWriter", "SkipLog"]


class ShardWriter:
    """Appends rows to ``data/train-NNNNN.parquet`` shards (see the module docstring)."""

    ROW_GROUP = 100  # rows buffered in memory; also a good page size for the Hub's viewer
    ROW_GROUP_BYTES = 128 * 2**20  # ... or fewer when they are large, to bound memory (and stay far below Arrow's 2 GiB per binary array)

    def __init__(self, output: Path, layout: Layout, shard_size: int, next_index: int, on_shard: Callable[[], None] | None = None) -> None:
        self.data_dir = output / DATA_DIR
        self.layout = layout
        self.schema = layout.arrow_schema()
        self.annotator = ",".join(layout.annotators)
        self.shard_size = shard_size
        self.index = next_index
        self.on_shard = on_shard
        self.buffer: list[Row] = []
        self.buffered_bytes = 0
        self.rows_in_shard = 0
        self.writer: Any = None

    def _tmp_path(self) -> Path:
        return self.data_dir / f".{shard_name(self.index)}.tmp"

    def add(self, row: Row) -> None:
        self.buffer.append(row)
        self.buffered_bytes += len(row.image) + sum(len(m) for m in row.maps)
        full = len(self.buffer) >= self.ROW_GROUP or self.buffered_bytes >= self.ROW_GROUP_BYTES
        if full or self.rows_in_shard + len(self.buffer) >= self.shard_size:
            self._flush()
        if self.rows_in_shard >= self.shard_size:
            self._finish_shard()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        rows, self.buffer, self.buffered_bytes = self.buffer, [], 0
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
        table = pa.Table.from_pydict(columns, schema=self.schema)
        if self.writer is None:
            # The encoded images neither compress nor repeat: no compression, dictionary or statistics for them.
            small = ["text", "file_name", "annotator", "width", "height"]
            self.writer = pq.ParquetWriter(
                self._tmp_path(),
                self.schema,
                compression={name: "snappy" for name in small + [c.name for c in self.layout.data_columns]},
                use_dictionary=["text", "file_name", "annotator"],
                write_statistics=small,
            )
        self.writer.write_table(table)
        self.rows_in_shard += len(rows)

    def _finish_shard(self) -> None:
        self._flush()
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        tmp = self._tmp_path()
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.data_dir / shard_name(self.index))
        self.index += 1
        self.rows_in_shard = 0
        if self.on_shard is not None:
            self.on_shard()

    def close(self) -> None:
        """Finish the open shard: every row in it is complete."""
        self._finish_shard()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self._tmp_path().unlink(missing_ok=True)


class SkipLog:
    """``skipped.jsonl``: appended and flushed per record. A line cut short by a crash is dropped
    when the log is opened again, so that input is simply retried."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.exists():
            raw = path.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            if len(complete) != len(raw):
                path.write_bytes(complete)
            for line in complete.decode("utf-8").splitlines():
                if line.strip():
                    self.records.append(json.loads(line))
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
        self.handle.close()
