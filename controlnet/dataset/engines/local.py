"""The local engine: a pool of worker processes on this machine.

* One worker: everything runs in this process (:func:`run`), and there is no worker to lose.
* Several workers that annotate (on the CPU) also write the shards (:func:`write`); moving every
  image and map through a pipe to this process, and writing them all here, cost as much CPU as a
  tenth of a worker. The pending inputs are cut into shards in input order, at most
  ``shard_size`` inputs each, their number a multiple of the workers' and their sizes equal, so
  that the workers finish together. A worker writes one shard at a time, reports its progress
  (rows, skips) after each chunk and a summary once the shard is renamed into place.
* An annotator on an accelerator (``BuildConfig.is_central``) is loaded once, in this process,
  which annotates whole batches while the workers decode and encode chunks (:func:`run`); each
  worker has at most two chunks (the one it works on, and the next, so that it never waits for
  this process), done in order, and this process writes the rows in input order.

The workers (:mod:`~controlnet.dataset.engines.workers`) each have a pipe of their own, so this
process always knows what a worker was working on, and sees its death at once. The death is
reported, a new worker replaces it, and the inputs of its chunk are retried one at a time, each on
a worker of its own; a shard it was writing is lost, and written again once they are done, with
their rows handed to it. An input whose worker dies a second time is skipped with that reason, so
one poisonous file costs one row, not the build. On an error or Ctrl-C the workers writing shards
are asked to close them after the chunk in hand, so that the rows already annotated are kept.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cv2

from controlnet.dataset.config import BuildConfig, BuildError
from controlnet.dataset.engines.workers import CONSECUTIVE_CRASHES, FINISH, Pool, Worker, dispatch, pipeline, received, setting
from controlnet.dataset.layout import Layout
from controlnet.dataset.pipeline import AnnotatorLoadError, Pipeline, Prepared, Row, Skip, unexpected_skip
from controlnet.dataset.shards import ShardSummary, write_shard
from controlnet.dataset.sources import SourceItem

__all__ = ["pipeline_args", "run", "write"]

log = logging.getLogger("controlnet.dataset")

#: deaths of the workers writing one shard, when no input can be blamed, before the build gives up
SHARD_DEATHS = 3
#: seconds the workers are given to close their shards once the build stops early (an error, Ctrl-C)
FINISH_SECONDS = 10.0


@dataclass(frozen=True)
class _Writing:
    """Where the workers write shards, and the inputs they process between two progress reports."""

    output: Path
    layout: Layout
    chunk: int


def _work_prepare(chunk: list[SourceItem], connection: Connection) -> list[Prepared | Skip]:
    worker = pipeline()
    return [worker.guarded_prepare(item) for item in chunk]


def _work_shard(task: tuple[Any, ...], connection: Connection) -> list[Row | Skip] | ShardSummary:
    """A task of a worker that writes shards: ``("rows", items)``, one input being retried alone,
    whose rows come back; or ``("shard", index, items, given)``, a shard to write, with the rows
    already made for some of its inputs (``given``, by file name). A ``("progress", (inputs, rows,
    skips))`` message goes out after each chunk, and the shard is closed early when FINISH comes."""
    if task[0] == "rows":
        return pipeline().process(task[1])
    _, index, items, given = task
    worker, writing = pipeline(), setting()

    def pieces() -> Iterator[list[Row | Skip]]:
        for start in range(0, len(items), writing.chunk):
            chunk = items[start : start + writing.chunk]
            made = iter(worker.process([item for item in chunk if item.file_name not in given]))
            yield [given[item.file_name] if item.file_name in given else next(made) for item in chunk]
            if connection.poll():  # nothing but FINISH comes while a shard is written
                connection.recv()
                return

    def report(piece: list[Row | Skip]) -> None:
        skips = [result for result in piece if isinstance(result, Skip)]
        connection.send(("progress", (len(piece), len(piece) - len(skips), skips)))

    return write_shard(writing.output, writing.layout, index, len(items), pieces(), report)


def shard_plan(items: Iterable[SourceItem], shard_size: int, count: int | None, workers: int, first_index: int) -> Iterator[tuple[int, list[SourceItem]]]:
    """Shards numbered from ``first_index``, in input order, of at most ``shard_size`` inputs. With
    ``count`` inputs in all, there are ceil(count / shard_size) shards rounded up to a multiple of
    ``workers``, all of one size (but the last), so that every worker has as much to do."""
    size = shard_size
    if count:
        shards = -(-count // shard_size)
        size = -(-count // (-(-shards // workers) * workers))
    index, shard = first_index, []
    for item in items:
        shard.append(item)
        if len(shard) == size:
            yield index, shard
            index, shard = index + 1, []
    if shard:
        yield index, shard


def _shown(items: list[SourceItem]) -> str:
    return ", ".join(item.file_name for item in items[:3]) + (" ..." if len(items) > 3 else "")


@dataclass
class _Crashes:
    """Inputs skipped in a row for killing their worker twice: at CONSECUTIVE_CRASHES, something
    kills every input, and the build stops."""

    workers: int
    in_a_row: int = 0

    def skip(self, item: SourceItem, how: str) -> Skip:
        self.in_a_row += 1
        if self.in_a_row >= CONSECUTIVE_CRASHES:
            raise BuildError(f"worker processes died on {self.in_a_row} inputs in a row (last: {how}); is there enough memory for --workers {self.workers}?")
        log.warning("%s: its worker process died again (%s); it is skipped", item.file_name, how)
        return Skip(item.file_name, item.path, f"its worker process died twice while processing it ({how})")


def _chunks(items: Iterable[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    chunk: list[SourceItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def pipeline_args(config: BuildConfig) -> tuple[Any, ...]:
    return (config.annotators, config.filters, None if config.keep_size else config.resolution, config.max_pixels, config.image_format, config.jpeg_quality, config.max_file_bytes, config.decode)


@dataclass
class _Task:
    """Inputs ``items`` of chunk ``sequence`` (all of it, or the input at ``part`` once split)."""

    sequence: int
    items: list[SourceItem]
    part: int | None = None
    deaths: int = 0  # worker deaths this task's inputs were in flight for


@dataclass
class _Results:
    """Finished chunks, kept until every earlier chunk is finished, and chunks split into inputs."""

    done: dict[int, list[Any]] = field(default_factory=dict)
    parts: dict[int, list[Any]] = field(default_factory=dict)

    def add(self, task: _Task, result: list[Any]) -> None:
        if task.part is None:
            self.done[task.sequence] = result
            return
        parts = self.parts[task.sequence]
        parts[task.part] = result
        if all(part is not None for part in parts):
            self.done[task.sequence] = [row for part in self.parts.pop(task.sequence) for row in part]


def run(config: BuildConfig, items: Iterable[SourceItem]) -> Iterator[list[Row | Skip]]:
    """Processed chunks in input order: all in this process (one worker), or annotated here while
    a pool with a bounded window decodes and encodes (an accelerator; when several workers annotate,
    they write the shards themselves: :func:`write`). Closing the generator early (an error,
    Ctrl-C) stops the workers at once."""
    args = pipeline_args(config)
    chunks = _chunks(items, config.chunk_size())
    if config.workers == 1:
        pipeline = Pipeline(*args)
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for chunk in chunks:
                yield pipeline.process(chunk)
        finally:
            cv2.setNumThreads(threads)
        return
    if not config.is_central:
        raise ValueError("several workers that annotate write the shards themselves: use write()")
    annotator = Pipeline(*args)
    pool = Pool(config.workers, _work_prepare, args, annotate=False)
    window = 2 * config.workers  # chunks handed out and not yet yielded
    retries: deque[_Task] = deque()  # inputs of broken chunks, run before new chunks
    results = _Results()
    handed_out = next_to_yield = 0
    crashes = _Crashes(config.workers)
    exhausted = False

    def next_task() -> _Task | None:
        nonlocal handed_out, exhausted
        if retries:
            return retries.popleft()
        if exhausted or handed_out - next_to_yield >= window:
            return None
        chunk = next(chunks, None)
        if chunk is None:
            exhausted = True
            return None
        handed_out += 1
        return _Task(handed_out - 1, chunk)

    def split(task: _Task) -> None:
        """Retry a chunk's inputs one by one, each on a worker of its own, before anything new."""
        if task.part is None:
            results.parts[task.sequence] = [None] * len(task.items)
            retries.extendleft(reversed([_Task(task.sequence, [item], part, task.deaths) for part, item in enumerate(task.items)]))
        else:
            retries.appendleft(task)

    def died(worker: Worker) -> None:
        """The worker ended: its first task is the one it was working on; the next was not begun."""
        task, *waiting = worker.tasks
        worker.tasks.clear()
        how = pool.replace(worker)
        retries.extendleft(reversed(waiting))
        task.deaths += 1
        if task.deaths == 1 or len(task.items) > 1:
            log.warning("a worker process died (%s) while processing %s; a new worker retries its inputs one by one", how, _shown(task.items))
            split(task)
            return
        results.add(task, [crashes.skip(task.items[0], how)])

    def replied(worker: Worker, status: str, payload: Any) -> None:
        task = worker.tasks.popleft()
        if status == "ok":
            crashes.in_a_row = 0
            results.add(task, payload)
        elif isinstance(payload, AnnotatorLoadError):
            raise payload
        elif len(task.items) > 1:  # the chunk failed as a whole (not one input): find the input at fault
            log.warning("a chunk of %d inputs failed (%s: %s); retrying them one by one", len(task.items), type(payload).__name__, payload)
            split(task)
        else:
            results.add(task, [unexpected_skip(task.items[0], payload)])

    def hand_out() -> None:
        for worker in list(pool.workers):
            while len(worker.tasks) < 2 and (task := next_task()) is not None:
                try:
                    worker.connection.send(task.items)
                except OSError:  # it died: not this task's fault, which waits for the next worker
                    retries.appendleft(task)
                    if worker.tasks:  # it had work: blame that, as when its death is seen by waiting
                        died(worker)
                    else:
                        pool.replace_idle(worker)
                    break
                worker.tasks.append(task)

    completed = False
    try:
        while True:
            hand_out()
            busy = [worker for worker in pool.workers if worker.tasks]
            if not busy:
                if retries:  # handed back by a worker that died idle
                    continue
                break  # every chunk was handed out, finished and yielded
            dispatch(busy, died, replied)
            hand_out()  # before the rows are yielded: the workers go on while this process writes them
            while next_to_yield in results.done:
                result = results.done.pop(next_to_yield)
                next_to_yield += 1
                yield annotator.annotate(result)
        completed = True
    finally:
        pool.stop(kill=not completed)


@dataclass
class _Shard:
    """A shard a worker writes: its inputs, and the rows already made for some of them (by file
    name; inputs retried alone after a worker died on them)."""

    index: int
    items: list[SourceItem]
    given: dict[str, Row] = field(default_factory=dict)
    reported: int = 0  # inputs the worker reported done in this attempt
    rows: int = 0  # rows it reported in this attempt, lost if it dies
    skipped: set[str] = field(default_factory=set)  # inputs it reported skipped: recorded, never done again
    deaths: int = 0  # deaths of its workers that no input could be blamed for
    alone: int = 0  # its inputs being retried alone; it is written again once they are done


@dataclass
class _Alone:
    """An input of ``shard`` retried on a worker of its own after a worker died on its chunk (the
    first death); a second death skips it."""

    shard: _Shard
    item: SourceItem


def write(
    config: BuildConfig,
    layout: Layout,
    items: Iterable[SourceItem],
    count: int | None,
    first_index: int,
    progress: Callable[[int, list[Skip]], None],
    finished: Callable[[ShardSummary], None],
) -> None:
    """Have the workers write the shards of ``items`` (``count`` of them, if known), numbered from
    ``first_index``; see the module docstring. ``progress(rows, skips)`` is called after each chunk
    (``rows`` is negative for the rows of a shard lost with its worker), ``finished(summary)`` once a
    shard is renamed into place."""
    writing = _Writing(config.output, layout, config.chunk_size())
    plan = shard_plan(items, config.shard_size, count, config.workers, first_index)
    ready: deque[_Shard | _Alone] = deque()  # taken before new shards
    crashes = _Crashes(config.workers)

    def next_task() -> _Shard | _Alone | None:
        if ready:
            return ready.popleft()
        shard = next(plan, None)
        return None if shard is None else _Shard(*shard)

    def resolve(alone: _Alone, result: Row | Skip) -> None:
        shard = alone.shard
        if isinstance(result, Skip):
            shard.items = [item for item in shard.items if item is not alone.item]
            progress(0, [result])
        else:
            shard.given[alone.item.file_name] = result
        shard.alone -= 1
        if shard.alone == 0:
            ready.appendleft(shard)

    def died(worker: Worker) -> None:
        task = worker.tasks.popleft()
        how = pool.replace(worker)
        if isinstance(task, _Alone):
            resolve(task, crashes.skip(task.item, how))
            return
        progress(-task.rows, [])
        suspects = [item for item in task.items[task.reported : task.reported + writing.chunk] if item.file_name not in task.given]
        task.items = [item for item in task.items if item.file_name not in task.skipped]
        task.reported = task.rows = 0
        if suspects:
            log.warning("a worker process died (%s) while processing %s; a new worker retries its inputs one by one", how, _shown(suspects))
            task.alone = len(suspects)
            ready.extendleft(reversed([_Alone(task, item) for item in suspects]))
            return
        task.deaths += 1
        if task.deaths >= SHARD_DEATHS:
            raise BuildError(f"worker processes died {task.deaths} times while writing shard {task.index} (last: {how})")
        log.warning("a worker process died (%s) while writing a shard; it is written again", how)
        ready.appendleft(task)

    def replied(worker: Worker, status: str, payload: Any) -> None:
        if status == "progress":
            inputs, rows, skips = payload
            shard = worker.tasks[0]
            shard.reported += inputs
            shard.rows += rows
            shard.skipped.update(skip.file_name for skip in skips)
            progress(rows, skips)
            return
        task = worker.tasks.popleft()
        if status == "ok":
            crashes.in_a_row = 0
            if isinstance(task, _Alone):
                resolve(task, payload[0])
            else:
                finished(payload)
        elif isinstance(task, _Alone) and not isinstance(payload, AnnotatorLoadError):
            resolve(task, unexpected_skip(task.item, payload))
        else:  # the annotators cannot load, or writing failed (a full disk): the build stops
            raise payload

    def hand_out() -> None:
        for worker in list(pool.workers):
            if worker.tasks or (task := next_task()) is None:
                continue
            message = ("rows", [task.item]) if isinstance(task, _Alone) else ("shard", task.index, task.items, task.given)
            try:
                worker.connection.send(message)
            except OSError:  # it died idle: not this task's fault, which waits for the next worker
                ready.appendleft(task)
                pool.replace_idle(worker)
                continue
            worker.tasks.append(task)

    pool = Pool(config.workers, _work_shard, pipeline_args(config), annotate=True, setting=writing)
    completed = False
    try:
        while True:
            hand_out()
            busy = [worker for worker in pool.workers if worker.tasks]
            if not busy:
                if ready:  # handed back by a worker that died idle
                    continue
                break
            dispatch(busy, died, replied)
        completed = True
    except BaseException:
        _close_early(pool, progress, finished)
        raise
    finally:
        pool.stop(kill=not completed)


def _close_early(pool: Pool, progress: Callable[[int, list[Skip]], None], finished: Callable[[ShardSummary], None]) -> None:
    """The build stops (an error, Ctrl-C): ask the workers writing shards to close them after the
    chunk in hand, and record those shards, for up to FINISH_SECONDS."""
    writing = [worker for worker in pool.workers if worker.tasks and isinstance(worker.tasks[0], _Shard)]
    for worker in writing:
        try:
            worker.connection.send(FINISH)
        except OSError:
            pass
    deadline = time.monotonic() + FINISH_SECONDS
    try:
        while writing and (left := deadline - time.monotonic()) > 0:
            for worker, message in received(writing, left):
                if message is not None and message[0] == "progress":
                    progress(message[1][1], message[1][2])
                    continue
                writing.remove(worker)
                if message is not None and message[0] == "ok" and isinstance(message[1], ShardSummary):
                    finished(message[1])
    except Exception:  # what fails now (a full disk) is not what stopped the build, which is raised
        log.debug("closing the shards early failed", exc_info=True)
