"""The streaming dataset builder: images in, a paired ControlNet training set out.

    build(BuildConfig(input="./images", output=Path("./ds"), annotators=(("canny", CannyConfig()),)))

The parts, one job each: :mod:`~controlnet.dataset.config` (what to build and its identity),
:mod:`~controlnet.dataset.layout` (file names, columns, schema), :mod:`~controlnet.dataset.sources`
(inputs and captions), :mod:`~controlnet.dataset.pipeline` (one input to one row),
:mod:`~controlnet.dataset.engines.local` (the worker pool), :mod:`~controlnet.dataset.shards`
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotators.weights import WeightsNotFoundError
from controlnet.dataset import card
from controlnet.dataset.config import BuildConfig, BuildError, default_workers
from controlnet.dataset.engines import local
from controlnet.dataset.layout import SKIPPED_FILE, shard_paths
from controlnet.dataset.lock import OutputLock
from controlnet.dataset.pipeline import AnnotatorLoadError, Row, Skip, skip_kind
from controlnet.dataset.resume import PREVIEW_ROWS, check_output, finished_state, prepare_output
from controlnet.dataset.shards import ShardWriter, SkipLog
from controlnet.dataset.sources import Source, open_source

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

    ``progress`` is called once before the first image and after each chunk. Raises
    :class:`BuildError` for an output folder that cannot be used (in use by another build, not
    writable, full) or an annotator that cannot load, and
    :class:`controlnet.dataset.sources.SourceError` for an input that cannot be read. On Ctrl-C
    the rows already annotated are written as a finished shard before ``KeyboardInterrupt`` propagates.
    """
    output = config.output
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
    kinds = skip_log.kinds()
    skipped_before = len(skip_log.records)
    state = BuildProgress(total=len(source), done_before=len(done))
    versions = card.package_versions(with_torch=any(a.weights is not None for a in config.instances()))
    # The card counts committed rows only: the statistics of rows in the open shard wait for its rename.
    tallies = finished.tallies
    open_tallies: dict[str, Counter[str]] = {column.name: Counter() for column in layout.data_columns}
    open_preview: list[dict[str, Any]] = []

    def write_card() -> None:
        card.write_card(
            output,
            card.CardInfo(
                identity=identity,
                layout=layout,
                rows=finished.rows + writer.rows_committed,
                skip_kinds=dict(kinds),
                tallies=tallies,
                filters=config.filters,
                preview=finished.preview,
                versions=versions,
                data_bytes=sum(shard.stat().st_size for shard in shard_paths(output)),
                license=license,
            ),
        )

    def commit() -> None:
        """A shard was renamed into place: every row added so far is in a finished shard."""
        take_rejected()
        for name, tally in open_tallies.items():
            tallies[name].update(tally)
            tally.clear()
        finished.preview.extend(open_preview[: PREVIEW_ROWS - len(finished.preview)])
        open_preview.clear()
        write_card()

    def skip(result: Skip) -> None:
        skip_log.add(result)
        kinds[result.kind] += 1
        state.skipped += 1

    def add(row: Row) -> None:
        state.rows += 1
        for column, tally in zip(layout.data_columns, row.tallies):
            open_tallies[column.name].update(tally)
        if len(finished.preview) + len(open_preview) < PREVIEW_ROWS:
            open_preview.append({"file_name": row.file_name, "text": row.caption, "width": row.width, "height": row.height})
        writer.add(row)
        take_rejected()

    def take_rejected() -> None:
        """Rows the writer could not store become skips, and leave the card's statistics."""
        for row, reason in writer.rejected:
            state.rows -= 1
            for column, tally in zip(layout.data_columns, row.tallies):
                open_tallies[column.name] -= tally  # keeps positive counts only, as if the row had not come
            open_preview[:] = [shown for shown in open_preview if shown["file_name"] != row.file_name]
            skip(Skip(row.file_name, None, reason))
        writer.rejected.clear()

    writer = ShardWriter(output, layout, config.shard_size, finished.next_index, on_shard=commit)
    write_card()
    if progress is not None:
        progress(state)
    started = time.perf_counter()
    pending = (item for item in source if item.file_name not in done)
    if state.total - state.done_before <= config.chunk_size():  # one task's worth: a pool would only cost
        config = dataclasses.replace(config, workers=1)
    try:
        with contextlib.closing(local.run(config, pending)) as chunks:  # closed first on an error: the workers stop at once
            for results in chunks:
                for result in results:
                    if isinstance(result, Skip):
                        skip(result)
                    else:
                        add(result)
                if progress is not None:
                    progress(state)
        writer.close()
        take_rejected()
    except BaseException as err:  # Ctrl-C included: the buffered rows are complete, so keep them if we can
        try:
            writer.close()  # after a failed write (a full disk), this deletes the open shard instead
        except Exception:
            writer.abort()
        take_rejected()
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
        rows=finished.rows + writer.rows_committed,
        skipped=skipped_before + state.skipped,
        rows_added=writer.rows_committed,
        skipped_added=state.skipped,
        seconds=time.perf_counter() - started,
        skip_kinds=dict(kinds),
    )
