"""The local engine's worker processes, started by fork, each with a pipe of its own.

A worker runs its pool's ``function(task, connection)`` on each task sent to it, in order, and
answers ``("ok", result)`` or ``("error", exception)``; the function may send messages of its own
before that (progress). A worker that dies (the out-of-memory killer, a crash in a native library),
even halfway through sending a message, is seen at once: its pipe ends and its process sentinel is
ready (:func:`received`). ``multiprocessing.Pool`` waits forever for a dead worker's task, and
``concurrent.futures`` can block reading a result cut short. Workers ignore Ctrl-C, which the
builder handles, and end when the builder does, even when it is killed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import cv2

from controlnet.dataset.config import BuildError
from controlnet.dataset.pipeline import AnnotatorLoadError, Pipeline

__all__ = ["CONSECUTIVE_CRASHES", "FINISH", "Pool", "Worker", "dispatch", "pipeline", "received", "setting"]

log = logging.getLogger("controlnet.dataset")

#: what the builder sends a worker writing a shard to have it closed after the chunk in hand
FINISH = "finish"
#: deaths in a row (of workers with an input, or idle ones per worker) before the build gives up
CONSECUTIVE_CRASHES = 10


_PIPELINE: Pipeline | None = None
_PIPELINE_ERROR: str | None = None  # why the worker's pipeline could not be made, raised by its first task
_SETTING: Any = None  # what the pool was started with for its tasks, besides the pipeline


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


def _init_worker(args: tuple[Any, ...], annotate: bool, parent: int, setting: Any) -> None:
    global _PIPELINE, _PIPELINE_ERROR, _SETTING
    _SETTING = setting
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent, which stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's own handler (if any) must not keep a worker alive
    cv2.setNumThreads(1)  # one core per worker: the pool is the parallelism
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:  # imported before the fork: its thread pool is already sized
        sys.modules["torch"].set_num_threads(1)
    try:
        _PIPELINE = Pipeline(*args, load_annotators=annotate)
    except Exception as err:  # reported by the first task, as a fault of the set-up
        _PIPELINE_ERROR = f"cannot start a worker: {type(err).__name__}: {err}"


def pipeline() -> Pipeline:
    """In a worker: its pipeline (:class:`AnnotatorLoadError` if it could not be made)."""
    if _PIPELINE is None:
        raise AnnotatorLoadError(_PIPELINE_ERROR or "the worker has no pipeline")
    return _PIPELINE


def setting() -> Any:
    """In a worker: what its pool was started with for the tasks (``Pool(setting=...)``)."""
    return _SETTING


def _serve(connection: Connection, function: Callable[[Any, Connection], Any], initargs: tuple[Any, ...]) -> None:
    """A worker's loop: tasks in, ``("ok", result)`` or ``("error", exception)`` out, in order, until
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
        if isinstance(chunk, str) and chunk == FINISH:  # came after its shard was closed: nothing to do
            continue
        try:
            reply: tuple[str, Any] = ("ok", function(chunk, connection))
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
class Worker:
    process: Any
    connection: Connection
    tasks: deque[Any] = field(default_factory=deque)  # sent and not answered, in order: the first is in progress


class Pool:
    """``size`` worker processes, each with its own pipe, that run ``function(task, connection)`` on
    the tasks sent to them with the pipeline of ``args`` (its annotators loaded when ``annotate``)."""

    def __init__(self, size: int, function: Callable[[Any, Connection], Any], args: tuple[Any, ...], annotate: bool, setting: Any = None) -> None:
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("fork" if "fork" in methods else None)
        self.function = function
        self.initargs = (args, annotate, os.getpid(), setting)
        self.workers = [self._start() for _ in range(size)]
        self.idle_deaths = 0

    def _start(self) -> Worker:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=_serve, args=(theirs, self.function, self.initargs), daemon=True)
        # OpenCV's thread pool is stopped across the fork: a child that resizes a pool it inherited
        # running waits forever for threads that do not exist in it.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            process.start()
        finally:
            cv2.setNumThreads(threads)
        theirs.close()  # the worker holds the only other end: its death ends the pipe for us
        return Worker(process, ours)

    def replace(self, worker: Worker) -> str:
        """Reap a dead worker, start another in its place, and say how the dead one ended."""
        worker.connection.close()
        if worker.process.exitcode is None:
            worker.process.kill()  # its pipe broke but it lives on: it cannot be trusted
        worker.process.join()
        how = f"process {worker.process.pid}: {_how(worker.process.exitcode)}"
        self.workers[self.workers.index(worker)] = self._start()
        return how

    def replace_idle(self, worker: Worker) -> None:
        """A worker found dead when it was sent a task: not that task's fault. Replace it, unless
        workers keep dying before they are given any work."""
        self.idle_deaths += 1
        if self.idle_deaths > CONSECUTIVE_CRASHES * len(self.workers):
            raise BuildError("worker processes keep dying before they are given any work") from None
        log.warning("a worker process died while idle (%s); a new one takes its place", self.replace(worker))

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


def received(busy: list[Worker], timeout: float | None = None) -> Iterator[tuple[Worker, tuple[str, Any] | None]]:
    """A message from each worker of ``busy`` that sent one, or None for each that ended (a message
    sent before a worker ended is still read; one cut short halfway is not)."""
    ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy], timeout))
    for worker in busy:
        if worker.connection in ready or worker.process.sentinel in ready:
            try:
                yield worker, worker.connection.recv()
            except (EOFError, OSError):
                yield worker, None


def dispatch(busy: list[Worker], died: Callable[[Worker], None], replied: Callable[[Worker, str, Any], None]) -> None:
    """Wait for the workers of ``busy``; hand each message to ``replied(worker, status, payload)``
    and each death to ``died(worker)``."""
    for worker, message in received(busy):
        if message is None:
            died(worker)
        else:
            replied(worker, *message)
