"""The local engine: a pool of worker processes on this machine.

Inputs are processed in chunks; at most a few chunks per worker are in flight, so memory does not
grow with the number of images, and results come back in input order. When an annotator runs on an
accelerator (``BuildConfig.is_central``), this process loads it once and annotates whole batches
while the workers only decode and encode.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import cv2

from controlnet.dataset.config import BuildConfig
from controlnet.dataset.pipeline import Pipeline, Prepared, Row, Skip
from controlnet.dataset.sources import SourceItem

__all__ = ["run"]

_WORKER: Pipeline | None = None


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
    global _WORKER
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent, which stops the pool
    cv2.setNumThreads(1)  # one core per worker: the pool is the parallelism
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:  # imported before the fork: its thread pool is already sized
        sys.modules["torch"].set_num_threads(1)
    _WORKER = Pipeline(*args, load_annotators=annotate)


def _work(chunk: list[SourceItem]) -> list[Row | Skip]:
    assert _WORKER is not None
    return _WORKER.process(chunk)


def _work_prepare(chunk: list[SourceItem]) -> list[Prepared | Skip]:
    assert _WORKER is not None
    return [_WORKER.prepare(item) for item in chunk]


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
    return (config.annotators, config.filters, None if config.keep_size else config.resolution, config.max_pixels, config.image_format, config.jpeg_quality)


def run(config: BuildConfig, items: Iterable[SourceItem]) -> Iterator[list[Row | Skip]]:
    """Processed chunks in input order, from this process or a pool with a bounded window."""
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
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    window = 2 * config.workers
    with context.Pool(config.workers, initializer=_init_worker, initargs=(args, not central, os.getpid())) as pool:
        pending: deque[Any] = deque()

        def finish(result: Any) -> list[Row | Skip]:
            return annotator.annotate(result) if annotator is not None else result

        for chunk in chunks:
            pending.append(pool.apply_async(_work_prepare if central else _work, (chunk,)))
            if len(pending) >= window:
                yield finish(pending.popleft().get())
        while pending:
            yield finish(pending.popleft().get())
