"""The streaming dataset builder: images in, a paired ControlNet training set out.

    build(BuildConfig(input="./images", output=Path("./ds"), annotators=(("canny", CannyConfig()),)))

The parts, one job each: :mod:`~controlnet.dataset.config` (what to build and its identity),
:mod:`~controlnet.dataset.layout` (file names, columns, schema), :mod:`~controlnet.dataset.sources`
(inputs and captions), :mod:`~controlnet.dataset.pipeline` (one input to one row),
:mod:`~controlnet.dataset.engines.local` (the worker pool) or :mod:`~controlnet.dataset.engines.ray`
(a Ray cluster, ``engine="ray"``), :mod:`~controlnet.dataset.shards`
(atomic shards and the skip log), :mod:`~controlnet.dataset.resume` (identity check and what is
done), :mod:`~controlnet.dataset.lock` (one build per folder) and :mod:`~controlnet.dataset.card`.
This module runs them in order. What survives which failure is in docs/reliability.md.

Notices that do not stop a build (a shard deleted because it did not read, a worker process that
died) go to the ``controlnet.dataset`` logger at WARNING level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotators.weights import WeightsNotFoundError
from controlnet.dataset import card
from controlnet.dataset.config import BuildConfig, BuildError, default_workers
from controlnet.dataset.engines import local
from controlnet.dataset.layout import SKIPPED_FILE, Layout, shard_index, shard_paths
from controlnet.dataset.lock import OutputLock
from controlnet.dataset.pipeline import AnnotatorLoadError, Row, Skip, skip_kind
from controlnet.dataset.resume import PREVIEW_ROWS, check_output, finished_state, prepare_output
from controlnet.dataset.shards import ShardSummary, ShardWriter, SkipLog, preview_of
from controlnet.dataset.sources import Source, SourceItem, open_source

__all__ = [
    "BuildConfig",
    "BuildError",
    "BuildProgress",
    "BuildResult",
    "build",
    "default_workers",
    "shard_paths",
    "skip_kind",
]


@dataclass
class BuildProgress:
    """Reported after each chunk: ``total`` inputs, of which ``done_before`` were done by earlier runs."""

    total: int
    done_before: int
    rows: int = 0
    skipped: int = 0

    @property
    def processed(self) -> int:
        return self.rows + self.skipped


@dataclass
class BuildResult:
    output: Path
    rows: int  # in the dataset, all runs together
    skipped: int  # in skipped.jsonl, all runs together
    rows_added: int
    skipped_added: int
    seconds: float
    skip_kinds: dict[str, int]
    nodes: int = 1  # machines that did the work (Ray nodes with --engine ray)

    @property
    def images_per_second(self) -> float:
        return (self.rows_added + self.skipped_added) / self.seconds if self.seconds > 0 else 0.0


def weights_identity(config: BuildConfig) -> dict[str, Any]:
    """The weights each annotator will load (names and sizes), found before anything starts, so that
    missing weights stop the build with the lookup's explanation instead of skipping every image."""
    found = {}
    for annotator in config.instances():
        try:
            identity = annotator.weights_identity()
        except WeightsNotFoundError as err:
            raise BuildError(f"{annotator.name}: {err}") from None
        if identity is not None:
            found[annotator.name] = identity
    return found


def _write_failure(output: Path, err: OSError) -> BuildError:
    """A write that failed, as one line: what is kept, and what to do."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return BuildError(
            f"no space left on the device of {output}: the finished shards are kept and the open one is discarded; "
            "free some space and run the same command again to continue"
        )
    return BuildError(f"cannot write to {output} ({err.strerror or err}); the finished shards are kept")


def build(config: BuildConfig, progress: Callable[[BuildProgress], None] | None = None, source: Source | None = None) -> BuildResult:
    """Build (or resume) the dataset described by ``config``.

    ``progress`` is called once before the first image and after each chunk (each shard with the
    Ray engine). Raises :class:`BuildError` for an output folder that cannot be used (in use by
    another build, not writable, full) or an annotator that cannot load, and
    :class:`controlnet.dataset.sources.SourceError` for an input that cannot be read. On Ctrl-C
    the rows already annotated are written as a finished shard before ``KeyboardInterrupt`` propagates
    (with the Ray engine, the shards its tasks finished are kept).
    """
    output = config.output
    if config.engine == "ray":  # before anything is written: without Ray, say how to install it
        from controlnet.dataset.engines import ray as ray_engine

        ray_engine.require()
    if source is None:
        source = open_source(
            config.input,
            prompt=config.prompt,
            image_column=config.image_column,
            caption_column=config.caption_column,
            split=config.split,
            exclude=output,
            revision=config.revision,
            max_file_bytes=config.max_file_bytes,
        )
    identity = config.identity(source, weights_identity(config))
    check_output(output)
    with OutputLock(output):
        try:
            return _build_locked(config, source, identity, progress)
        except OSError as err:
            raise _write_failure(output, err) from None


def _build_locked(config: BuildConfig, source: Source, identity: dict[str, Any], progress: Callable[[BuildProgress], None] | None) -> BuildResult:
    output = config.output
    layout = config.layout()
    license = config.license or card.previous_license(output)  # a resumed run keeps the licence given before
    prepare_output(output, identity, config.overwrite)

    finished = finished_state(output, layout)
    skip_log = SkipLog(output / SKIPPED_FILE)
    done = finished.done | skip_log.keys()
    skipped_before = len(skip_log.records)
    state = BuildProgress(total=len(source), done_before=len(done))
    record = _Record(skip_log, skip_log.kinds(), state, finished.tallies, finished.preview, layout, committed=finished.rows)
    versions = card.package_versions(with_torch=any(a.weights is not None for a in config.instances()))

    def write_card() -> None:
        card.write_card(
            output,
            card.CardInfo(
                identity=identity,
                layout=layout,
                rows=record.committed,
                skip_kinds=dict(record.kinds),
                tallies=record.tallies,
                filters=config.filters,
                preview=record.preview,
                versions=versions,
                data_bytes=sum(shard.stat().st_size for shard in shard_paths(output)),
                license=license,
            ),
        )

    write_card()
    if progress is not None:
        progress(state)
    started = time.perf_counter()
    try:
        if config.engine == "ray":
            _run_ray(config, source, done, record, write_card, progress)
        else:
            _run_local(config, (item for item in source if item.file_name not in done), finished.next_index, record, write_card, progress)
    except BaseException as err:
        skip_log.close()
        with contextlib.suppress(OSError):  # the card of the last finished shard stays: it claims no row that is not there
            write_card()
        if isinstance(err, AnnotatorLoadError):  # a fault of the set-up: one line, not a traceback
            raise BuildError(str(err)) from None
        raise
    skip_log.close()
    write_card()
    return BuildResult(
        output=output,
        rows=record.committed,
        skipped=skipped_before + state.skipped,
        rows_added=record.committed - finished.rows,
        skipped_added=state.skipped,
        seconds=time.perf_counter() - started,
        skip_kinds=dict(record.kinds),
        nodes=max(1, len(record.nodes)),
    )


@dataclass
class _Record:
    """What this run adds, as it comes: skips go to the log at once; the card counts committed rows
    only, so the statistics of rows in the open shard wait for its rename."""

    skip_log: SkipLog
    kinds: Counter[str]
    state: BuildProgress
    tallies: dict[str, Counter[str]]  # of committed rows
    preview: list[dict[str, Any]]  # of committed rows
    layout: Layout
    committed: int  # rows in finished shards, all runs together
    nodes: set[str] = field(default_factory=set)  # Ray nodes that did the work
    shard_previews: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # of the shards others wrote, by index
    open_tallies: dict[str, Counter[str]] = field(default_factory=dict)
    open_preview: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, skip: Skip) -> None:
        self.skip_log.add(skip)
        self.kinds[skip.kind] += 1
        self.state.skipped += 1

    def row(self, row: Row) -> None:
        """A row handed to the open shard."""
        self.state.rows += 1
        for column, tally in zip(self.layout.data_columns, row.tallies):
            self.open_tallies.setdefault(column.name, Counter()).update(tally)
        if len(self.preview) + len(self.open_preview) < PREVIEW_ROWS:
            self.open_preview.append(preview_of(row))

    def reject(self, row: Row, reason: str) -> None:
        """A row the writer could not store becomes a skip, and leaves the statistics."""
        self.state.rows -= 1
        for column, tally in zip(self.layout.data_columns, row.tallies):
            self.open_tallies[column.name] -= tally  # keeps positive counts only, as if the row had not come
        self.open_preview[:] = [shown for shown in self.open_preview if shown["file_name"] != row.file_name]
        self.skip(Skip(row.file_name, None, reason))

    def commit(self, rows: int) -> None:
        """The open shard was renamed into place with ``rows`` rows."""
        self.committed += rows
        for name, tally in self.open_tallies.items():
            self.tallies[name].update(tally)
        self.open_tallies.clear()
        self.preview.extend(self.open_preview[: max(0, PREVIEW_ROWS - len(self.preview))])
        self.open_preview.clear()

    def shard(self, summary: ShardSummary, counted: bool = False) -> None:
        """A shard that another process wrote and committed (a local worker, a Ray task); ``counted``:
        its rows were counted as they were reported. The preview shows rows in shard order."""
        for skip in summary.rejected:
            self.skip(skip)
        self.state.rows += -len(summary.rejected) if counted else summary.rows
        self.committed += summary.rows
        for column, tally in zip(self.layout.data_columns, summary.tallies):
            self.tallies[column.name].update(tally)
        self.nodes |= summary.nodes
        if not self.shard_previews:
            self.shard_previews[-1] = self.preview[:]  # the shards finished before this run come first
        self.shard_previews[summary.index] = summary.preview
        self.preview = [shown for index in sorted(self.shard_previews) for shown in self.shard_previews[index]][:PREVIEW_ROWS]


def _run_local(
    config: BuildConfig,
    pending: Iterator[SourceItem],
    next_index: int,
    record: _Record,
    write_card: Callable[[], None],
    progress: Callable[[BuildProgress], None] | None,
) -> None:
    """The local engine's rows, written here in input order, in shards of ``shard_size`` rows; or,
    when several workers annotate, written by them."""
    state = record.state
    if state.total - state.done_before <= config.chunk_size():  # one task's worth: a pool would only cost
        config = dataclasses.replace(config, workers=1)
    if config.workers > 1 and not config.is_central:
        _run_local_workers_write(config, pending, next_index, record, write_card, progress)
        return
    committed_before = 0

    def take_rejected() -> None:
        for row, reason in writer.rejected:
            record.reject(row, reason)
        writer.rejected.clear()

    def on_shard() -> None:
        nonlocal committed_before
        take_rejected()
        record.commit(writer.rows_committed - committed_before)
        committed_before = writer.rows_committed
        write_card()

    writer = ShardWriter(config.output, record.layout, config.shard_size, next_index, on_shard=on_shard)
    try:
        with contextlib.closing(local.run(config, pending)) as chunks:  # closed first on an error: the workers stop at once
            for results in chunks:
                for result in results:
                    if isinstance(result, Skip):
                        record.skip(result)
                        continue
                    record.row(result)
                    writer.add(result)
                    take_rejected()
                if progress is not None:
                    progress(state)
        writer.close()
        take_rejected()
    except BaseException:  # Ctrl-C included: the buffered rows are complete, so keep them if we can
        try:
            writer.close()  # after a failed write (a full disk), this deletes the open shard instead
        except Exception:
            writer.abort()
        take_rejected()
        raise


def _run_local_workers_write(
    config: BuildConfig,
    pending: Iterator[SourceItem],
    next_index: int,
    record: _Record,
    write_card: Callable[[], None],
    progress: Callable[[BuildProgress], None] | None,
) -> None:
    """The local engine's shards, written by its workers; here their progress and summaries are recorded."""
    state = record.state

    def progressed(rows: int, skips: list[Skip]) -> None:
        for skip in skips:
            record.skip(skip)
        state.rows += rows
        if progress is not None:
            progress(state)

    def finished(summary: ShardSummary) -> None:
        record.shard(summary, counted=True)
        write_card()

    local.write(config, record.layout, pending, state.total - state.done_before, next_index, progressed, finished)


def _run_ray(
    config: BuildConfig,
    source: Source,
    done: set[str],
    record: _Record,
    write_card: Callable[[], None],
    progress: Callable[[BuildProgress], None] | None,
) -> None:
    """The Ray engine's shards, written by its tasks; here only their summaries are recorded."""
    from controlnet.dataset.engines import ray as ray_engine

    pending = ((position, item) for position, item in enumerate(source) if item.file_name not in done)
    taken = {shard_index(path) for path in shard_paths(config.output)}
    for summary in ray_engine.run(config, pending, taken):
        for skip in summary.skips:
            record.skip(skip)
        record.shard(summary)
        write_card()
        if progress is not None:
            progress(record.state)
