"""The local engine: a pool of worker processes on this machine.

Inputs are processed in chunks; at most a few chunks per worker are in flight, so memory does not
grow with the number of images, and results come back in input order. When an annotator runs on an
accelerator (``BuildConfig.is_central``), this process loads it once and annotates whole batches
while the workers only decode and encode.

A worker that dies (the out-of-memory killer, a crash in a native library) breaks the pool: the
death is reported, the pool is started again, and the chunks that were in flight are retried one at
a time. A chunk that kills its worker again is retried one input at a time, and an input that kills
its worker on its own is skipped with that reason, so one poisonous file costs one row, not the
build. (With ``workers=1`` everything runs in this process, and there is no worker to lose.)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cv2

from controlnet.dataset.config import BuildConfig, BuildError
from controlnet.dataset.pipeline import AnnotatorLoadError, Pipeline, Prepared, Row, Skip
from controlnet.dataset.sources import SourceItem

__all__ = ["run"]

log = logging.getLogger("controlnet.dataset")

_WORKER: Pipeline | None = None
_WORKER_ERROR: str | None = None  # why the worker's pipeline could not be made, raised by its first task
#: inputs skipped in a row for killing their worker before the build gives up: something is wrong with every input
CONSECUTIVE_CRASHES = 10


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
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent, which stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's own handler (if any) must not keep a worker alive
    cv2.setNumThreads(1)  # one core per worker: the pool is the parallelism
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:  # imported before the fork: its thread pool is already sized
        sys.modules["torch"].set_num_threads(1)
    try:
        _WORKER = Pipeline(*args, load_annotators=annotate)
    except Exception as err:  # an initializer that raises breaks the pool, which would read as a crash
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
    return (config.annotators, config.filters, None if config.keep_size else config.resolution, config.max_pixels, config.max_file_bytes)


def _how(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"it exited with status {exitcode}"


class _Pool:
    """A ProcessPoolExecutor that can be started again after a worker dies, and that knows its
    worker processes (to say how one died, and to stop them at once on Ctrl-C)."""

    def __init__(self, workers: int, initargs: tuple[Any, ...]) -> None:
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("fork" if "fork" in methods else None)
        self.workers = workers
        self.initargs = initargs
        self.executor: ProcessPoolExecutor | None = None
        self.processes: list[Any] = []

    def submit(self, function: Callable[[list[SourceItem]], Any], chunk: list[SourceItem]) -> Future[Any]:
        """The chunk's future; when the pool broke since the last look, one that failed with it."""
        if self.executor is None:
            before = set(multiprocessing.active_children())
            self.executor = ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_init_worker, initargs=self.initargs)
            future = self.executor.submit(function, chunk)  # with fork, the first submit starts every worker
            self.processes = [p for p in multiprocessing.active_children() if p not in before]
            return future
        try:
            return self.executor.submit(function, chunk)
        except BrokenProcessPool as err:  # handled like the chunks that were in flight: retried alone
            failed: Future[Any] = Future()
            failed.set_exception(err)
            return failed

    def death(self) -> str:
        """How the pool's dead worker died, as far as its exit status tells."""
        for process in self.processes:
            process.join(timeout=5)
        codes = [(p.pid, p.exitcode) for p in self.processes]
        # The executor ends the other workers with SIGTERM once one has died; the first death is another one.
        dead = [(pid, code) for pid, code in codes if code != -signal.SIGTERM] or codes[:1]
        return ", ".join(f"process {pid}: {_how(code)}" for pid, code in dead) or "no details"

    def restart(self) -> None:
        self.stop(kill=False)

    def stop(self, kill: bool) -> None:
        if self.executor is None:
            return
        if kill:  # Ctrl-C or an error: do not wait for the chunks in progress
            for process in self.processes:
                if process.exitcode is None:
                    process.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = None
        self.processes = []


def run(config: BuildConfig, items: Iterable[SourceItem]) -> Iterator[list[Row | Skip]]:
    """Processed chunks in input order, from this process or a pool with a bounded window.
    Closing the generator early (an error, Ctrl-C) stops the workers at once."""
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
    central = config.is_central
    annotator = Pipeline(*args) if central else None
    function = _work_prepare if central else _work
    pool = _Pool(config.workers, (args, not central, os.getpid()))
    window = 2 * config.workers
    in_flight: deque[tuple[list[SourceItem], Future[Any]]] = deque()
    crashes_in_a_row = 0

    def finish(result: Any) -> list[Row | Skip]:
        return annotator.annotate(result) if annotator is not None else result

    def alone(chunk: list[SourceItem]) -> list[Any]:
        """Run ``chunk`` with nothing else in flight; its inputs one by one if it fails again. An
        input that kills its worker on its own is skipped."""
        nonlocal crashes_in_a_row
        try:
            result = pool.submit(function, chunk).result()
        except BrokenProcessPool:
            how = pool.death()
            pool.restart()
        except AnnotatorLoadError:
            raise
        except Exception as err:  # e.g. a result that cannot be sent back
            how = f"{type(err).__name__}: {err}"
        else:
            crashes_in_a_row = 0
            return result
        if len(chunk) > 1:
            log.warning("the workers failed again on a chunk of %d inputs (%s); retrying them one by one", len(chunk), how)
            return [result for item in chunk for result in alone([item])]
        (item,) = chunk
        crashes_in_a_row += 1
        if crashes_in_a_row >= CONSECUTIVE_CRASHES:
            raise BuildError(f"worker processes died on {crashes_in_a_row} inputs in a row (last: {how}); is there enough memory for --workers {config.workers}?")
        log.warning("%s: its worker failed again while processing it alone (%s); it is skipped", item.file_name, how)
        return [Skip(item.file_name, item.path, f"its worker process died twice while processing it ({how})")]

    def settled(chunk: list[SourceItem], future: Future[Any]) -> Any:
        """The result of a chunk whose future is done and did not break the pool."""
        try:
            return future.result()
        except AnnotatorLoadError:
            raise
        except Exception as err:  # this chunk's own failure, not the pool's: find the input at fault
            log.warning("a chunk of %d inputs failed (%s: %s); retrying them one by one", len(chunk), type(err).__name__, err)
            return [result for item in chunk for result in alone([item])]

    def oldest() -> Iterator[list[Row | Skip]]:
        """The oldest chunk's rows; after a worker died, those of every chunk that was in flight."""
        chunk, future = in_flight[0]
        wait([future])
        if not isinstance(future.exception(), BrokenProcessPool):
            in_flight.popleft()
            yield finish(settled(chunk, future))
            return
        # The executor fails every unfinished chunk with it; those that finished keep their results.
        wait([f for _, f in in_flight])
        lost = [(c, f) for c, f in in_flight if isinstance(f.exception(), BrokenProcessPool)]
        log.warning(
            "a worker process died (%s); starting new workers and retrying the %d inputs that were in progress",
            pool.death(),
            sum(len(c) for c, _ in lost),
        )
        pool.restart()
        while in_flight:
            chunk, future = in_flight.popleft()
            yield finish(alone(chunk) if isinstance(future.exception(), BrokenProcessPool) else settled(chunk, future))

    completed = False
    try:
        for chunk in chunks:
            in_flight.append((chunk, pool.submit(function, chunk)))
            while len(in_flight) >= window:
                yield from oldest()
        while in_flight:
            yield from oldest()
        completed = True
    finally:
        pool.stop(kill=not completed)
