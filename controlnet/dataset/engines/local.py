"""The local engine: a pool of worker processes on this machine.

Inputs are processed in chunks; at most a few chunks per worker are in flight, so memory does not
grow with the number of images, and results come back in input order. When an annotator runs on an
accelerator (``BuildConfig.is_central``), this process loads it once and annotates whole batches
while the workers only decode and encode.

Each worker has a pipe of its own and at most two chunks (the one it works on, and the next, so
that it never waits for this process), done in order, so this process always knows which chunk a
worker was working on. A worker that dies (the out-of-memory killer, a crash in a native library),
even halfway through sending its result, is seen at once (its pipe ends, its process sentinel is
ready): the death is reported, a new worker replaces it, and its chunk is retried one input at a
time, each on a worker of its own. An input whose worker dies a second time is skipped with that
reason, so one poisonous file costs one row, not the build. (``multiprocessing.Pool`` waits forever
for a dead worker's task, and ``concurrent.futures`` can block reading a result cut short.) With
``workers=1`` everything runs in this process, and there is no worker to lose.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import cv2

from controlnet.dataset.config import BuildConfig, BuildError
from controlnet.dataset.pipeline import AnnotatorLoadError, Pipeline, Prepared, Row, Skip
from controlnet.dataset.sources import SourceItem

__all__ = ["run"]

log = logging.getLogger("controlnet.dataset")

#: inputs skipped in a row for killing their worker before the build gives up: something kills every input
CONSECUTIVE_CRASHES = 10

_WORKER: Pipeline | None = None
_WORKER_ERROR: str | None = None  # why the worker's pipeline could not be made, raised by its first task


def _die_with_parent(parent: int) -> None:
    """Workers end when the builder does, even when it is killed with SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def _init_worker(args: tuple[Any, ...], annotate: bool, parent: int) -> None:
    global _WORKER, _WORKER_ERROR
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent, which stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's own handler (if any) must not keep a worker alive
    cv2.setNumThreads(1)  # one core per worker: the pool is the parallelism
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:  # imported before the fork: its thread pool is already sized
        sys.modules["torch"].set_num_threads(1)
    try:
        _WORKER = Pipeline(*args, load_annotators=annotate)
    except Exception as err:  # reported by the first task, as a fault of the set-up
        _WORKER_ERROR = f"cannot start a worker: {type(err).__name__}: {err}"


def _pipeline() -> Pipeline:
    if _WORKER is None:
        raise AnnotatorLoadError(_WORKER_ERROR or "the worker has no pipeline")
    return _WORKER


def _work(chunk: list[SourceItem]) -> list[Row | Skip]:
    return _pipeline().process(chunk)


def _work_prepare(chunk: list[SourceItem]) -> list[Prepared | Skip]:
    worker = _pipeline()
    return [worker.guarded_prepare(item) for item in chunk]


def _serve(connection: Connection, function: Callable[[list[SourceItem]], Any], initargs: tuple[Any, ...]) -> None:
    """A worker's loop: chunks in, ``("ok", result)`` or ``("error", exception)`` out, in order, until
    the pipe closes or None comes."""
    _init_worker(*initargs)
    chunks: deque[Any] = deque()
    while True:
        if not chunks:
            try:
                chunks.append(connection.recv())
            except (EOFError, OSError):
                return
        chunk = chunks.popleft()
        if chunk is None:
            return
        try:
            reply: tuple[str, Any] = ("ok", function(chunk))
        except Exception as err:
            reply = ("error", err)
        # Read what was sent meanwhile before replying: a sender blocked on a full pipe must not
        # wait for us while we wait for it to read our reply.
        while connection.poll():
            try:
                chunks.append(connection.recv())
            except (EOFError, OSError):
                return
        try:
            connection.send(reply)
        except (EOFError, OSError):
            return
        except Exception as err:  # a result that cannot be pickled: say so instead
            connection.send(("error", RuntimeError(f"the result cannot be sent back ({type(err).__name__}: {err})")))


def _chunks(items: Iterable[SourceItem], size: int, count: int | None = None, workers: int = 1) -> Iterator[list[SourceItem]]:
    """Chunks of ``size`` inputs. When there are ``count`` inputs in all, the last ones, fewer than
    two rounds of chunks for ``workers``, are cut finer and finer down to single inputs, so that the
    workers finish together instead of one of them working alone through a last chunk (which costs
    most with large photos)."""
    left = count
    chunk: list[SourceItem] = []
    limit = size
    for item in items:
        if not chunk and left is not None:
            limit = size if left >= 2 * workers * size else max(1, -(-left // (2 * workers)))
        chunk.append(item)
        if len(chunk) == limit:
            yield chunk
            left = None if left is None else left - len(chunk)
            chunk = []
    if chunk:
        yield chunk


def pipeline_args(config: BuildConfig) -> tuple[Any, ...]:
    return (config.annotators, config.filters, None if config.keep_size else config.resolution, config.max_pixels, config.image_format, config.jpeg_quality, config.max_file_bytes, config.decode)


def _how(exitcode: int | None) -> str:
    if exitcode is None:
        return "its pipe closed"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


@dataclass
class _Task:
    """Inputs ``items`` of chunk ``sequence`` (all of it, or the input at ``part`` once split)."""

    sequence: int
    items: list[SourceItem]
    part: int | None = None
    deaths: int = 0  # worker deaths this task's inputs were in flight for


@dataclass
class _Worker:
    process: Any
    connection: Connection
    tasks: deque[_Task] = field(default_factory=deque)  # sent and not answered, in order: the first is in progress


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


class _Pool:
    """Worker processes, each with its own pipe; see the module docstring."""

    def __init__(self, size: int, function: Callable[[list[SourceItem]], Any], initargs: tuple[Any, ...]) -> None:
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("fork" if "fork" in methods else None)
        self.function = function
        self.initargs = initargs
        self.workers = [self._start() for _ in range(size)]

    def _start(self) -> _Worker:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=_serve, args=(theirs, self.function, self.initargs), daemon=True)
        process.start()
        theirs.close()  # the worker holds the only other end: its death ends the pipe for us
        return _Worker(process, ours)

    def replace(self, worker: _Worker) -> str:
        """Reap a dead worker, start another in its place, and say how the dead one ended."""
        worker.connection.close()
        if worker.process.exitcode is None:
            worker.process.kill()  # its pipe broke but it lives on: it cannot be trusted
        worker.process.join()
        how = f"process {worker.process.pid}: {_how(worker.process.exitcode)}"
        self.workers[self.workers.index(worker)] = self._start()
        return how

    def stop(self, kill: bool) -> None:
        for worker in self.workers:
            if not kill:
                try:
                    worker.connection.send(None)
                except OSError:
                    pass
            worker.connection.close()
        for worker in self.workers:
            worker.process.join(timeout=None if not kill else 0)
            if worker.process.exitcode is None:
                worker.process.kill()  # Ctrl-C or an error: the chunks in progress are not waited for
                worker.process.join()


def run(config: BuildConfig, items: Iterable[SourceItem], count: int | None = None) -> Iterator[list[Row | Skip]]:
    """Processed chunks in input order, from this process or a pool with a bounded window;
    ``count``, the number of ``items`` if known, lets the last chunks be cut finer when the workers
    annotate image by image.
    Closing the generator early (an error, Ctrl-C) stops the workers at once."""
    args = pipeline_args(config)
    # Cutting the last chunks finer balances workers that annotate image by image; batches (for an
    # accelerator, or an annotator that prefers them) keep their size.
    per_image = config.workers > 1 and not config.is_central and all(a.preferred_batch_size == 1 for a in config.instances())
    chunks = _chunks(items, config.chunk_size(), count if per_image else None, config.workers)
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
    central = config.is_central
    annotator = Pipeline(*args) if central else None
    pool = _Pool(config.workers, _work_prepare if central else _work, (args, not central, os.getpid()))
    window = 2 * config.workers  # chunks handed out and not yet yielded
    retries: deque[_Task] = deque()  # inputs of broken chunks, run before new chunks
    results = _Results()
    handed_out = next_to_yield = 0
    crashes_in_a_row = 0
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

    def died(worker: _Worker) -> None:
        """The worker ended: its first task is the one it was working on; the next was not begun."""
        nonlocal crashes_in_a_row
        task, *waiting = worker.tasks
        worker.tasks.clear()
        how = pool.replace(worker)
        retries.extendleft(reversed(waiting))
        task.deaths += 1
        if task.deaths == 1 or len(task.items) > 1:
            shown = ", ".join(item.file_name for item in task.items[:3]) + (" ..." if len(task.items) > 3 else "")
            log.warning("a worker process died (%s) while processing %s; a new worker retries its inputs one by one", how, shown)
            split(task)
            return
        (item,) = task.items
        crashes_in_a_row += 1
        if crashes_in_a_row >= CONSECUTIVE_CRASHES:
            raise BuildError(f"worker processes died on {crashes_in_a_row} inputs in a row (last: {how}); is there enough memory for --workers {config.workers}?")
        log.warning("%s: its worker process died again (%s); it is skipped", item.file_name, how)
        results.add(task, [Skip(item.file_name, item.path, f"its worker process died twice while processing it ({how})")])

    def replied(worker: _Worker, status: str, payload: Any) -> None:
        nonlocal crashes_in_a_row
        task = worker.tasks.popleft()
        if status == "ok":
            crashes_in_a_row = 0
            results.add(task, payload)
        elif isinstance(payload, AnnotatorLoadError):
            raise payload
        elif len(task.items) > 1:  # the chunk failed as a whole (not one input): find the input at fault
            log.warning("a chunk of %d inputs failed (%s: %s); retrying them one by one", len(task.items), type(payload).__name__, payload)
            split(task)
        else:
            (item,) = task.items
            message = " ".join(str(payload).split())[:300]
            results.add(task, [Skip(item.file_name, item.path, f"unexpected error ({type(payload).__name__}: {message})")])

    def finish(result: list[Any]) -> list[Row | Skip]:
        return annotator.annotate(result) if annotator is not None else result

    def hand_out() -> None:
        nonlocal idle_deaths
        for worker in list(pool.workers):
            while len(worker.tasks) < 2 and (task := next_task()) is not None:
                try:
                    worker.connection.send(task.items)
                except OSError:  # it died: not this task's fault, which waits for the next worker
                    retries.appendleft(task)
                    if worker.tasks:  # it had work: blame that, as when its death is seen by waiting
                        died(worker)
                        break
                    idle_deaths += 1
                    if idle_deaths > CONSECUTIVE_CRASHES * config.workers:
                        raise BuildError("worker processes keep dying before they are given any work") from None
                    log.warning("a worker process died while idle (%s); a new one takes its place", pool.replace(worker))
                    break
                worker.tasks.append(task)

    idle_deaths = 0
    completed = False
    try:
        while True:
            hand_out()
            busy = [worker for worker in pool.workers if worker.tasks]
            if not busy:
                if retries:  # handed back by a worker that died idle
                    continue
                break  # every chunk was handed out, finished and yielded
            ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.connection not in ready and worker.process.sentinel not in ready:
                    continue
                try:  # a reply sent before a worker ended is still read
                    status, payload = worker.connection.recv()
                except (EOFError, OSError):  # ended, or cut short halfway through its reply
                    died(worker)
                    continue
                replied(worker, status, payload)
            hand_out()  # before the rows are yielded: the workers go on while this process writes them
            while next_to_yield in results.done:
                result = results.done.pop(next_to_yield)
                next_to_yield += 1
                yield finish(result)
        completed = True
    finally:
        pool.stop(kill=not completed)
