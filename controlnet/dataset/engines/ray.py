"""The Ray engine (``--engine ray``): the same dataset, built by the tasks of a Ray cluster.

The driver (the process running :func:`controlnet.dataset.build.build`) lists the inputs and cuts
the pending ones into shards fixed by position: shard ``k`` takes the inputs at positions
``k*S .. k*S+S-1`` of the source (``S``: ``--shard-size``), so a build, a resumed build and a local
build store the same rows in the same order. File names and summaries pass through the driver,
never images:

* CPU annotators: every piece of ``--batch-size`` inputs is one Ray task that reads, decodes,
  resizes, annotates and encodes it (:meth:`Pipeline.process`).
* Annotators on an accelerator (``device != "cpu"``): Ray Data ``map_batches`` over the shards
  with a class, that is a pool of actors, each reserving ``--ray-gpus-per-actor`` GPUs and loading
  the models once. An actor decodes its shard's pieces in CPU tasks, runs the networks on each
  piece (a batch of ``--batch-size`` images) and has CPU tasks encode the maps.
* Either way one task per shard gathers its pieces in order and writes the shard with
  :func:`~controlnet.dataset.shards.write_shard` (a hidden temporary file, renamed into place).

The driver appends the skipped inputs that the shard tasks report to ``skipped.jsonl`` in shard
order, and writes the card. Ray retries a task whose worker dies and restarts a killed actor (which
loads its models again); a retried task writes the same shard again, so each input still gives
exactly one row. Killing the driver stops the build: running it again skips the finished shards.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotators
from annotators.base import Annotator, AnnotatorConfig
from controlnet.dataset.config import BuildConfig, BuildError
from controlnet.dataset.engines.local import pipeline_args
from controlnet.dataset.layout import Layout
from controlnet.dataset.pipeline import AnnotatorLoadError, Pipeline, Prepared, Row, Skip
from controlnet.dataset.shards import ShardSummary, write_shard
from controlnet.dataset.sources import SourceItem

__all__ = ["INSTALL_HINT", "plan", "require", "run"]

INSTALL_HINT = "--engine ray needs Ray, which is not installed: pip install 'cn-annotate[ray]'"
#: pieces an actor has decoded ahead of the one it annotates
LOOKAHEAD = 2


@dataclass(frozen=True)
class _Spec:
    """What every task needs, sent once per build: the pipeline's arguments and where to write.

    ``classes`` travel with it, so that annotators registered at run time in the driver (plug-ins
    defined in a script or a test) exist in the workers too."""

    key: str  # one per build: a worker rebuilds its pipeline when it changes
    classes: tuple[tuple[str, type[Annotator]], ...]
    args: tuple[Any, ...]  # Pipeline's
    output: str
    layout: Layout


def require() -> Any:
    """The ``ray`` module, or :class:`BuildError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BuildError(INSTALL_HINT) from None
    return ray


# --------------------------------------------------------------------------- in the workers

_PIPELINE: tuple[str, Pipeline] | None = None  # this worker's, for the build it last served


def _pipeline(spec: _Spec) -> Pipeline:
    """This worker's pipeline for ``spec`` (made once per build; models load on first use)."""
    global _PIPELINE
    if _PIPELINE is None or _PIPELINE[0] != spec.key:
        import cv2

        for name, cls in spec.classes:
            try:
                known = annotators.get_class(name) is cls
            except annotators.UnknownAnnotatorError:
                known = False
            if not known:
                annotators.register(name, cls)
        cv2.setNumThreads(1)  # a task holds one CPU: the tasks are the parallelism
        _PIPELINE = None  # let the previous build's models go first
        _PIPELINE = (spec.key, Pipeline(*spec.args))
    return _PIPELINE[1]


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _process(spec: _Spec, items: list[SourceItem]) -> tuple[str, list[Row | Skip]]:
    """A piece, start to finish (CPU annotators)."""
    return _node(), _pipeline(spec).process(items)


def _prepare(spec: _Spec, items: list[SourceItem]) -> tuple[str, list[Prepared | Skip]]:
    """Read, decode and resize a piece for an actor."""
    pipeline = _pipeline(spec)
    return _node(), [pipeline.prepare(item) for item in items]


def _finish(spec: _Spec, node: str, prepared: list[Prepared | Skip], annotations: list[Any]) -> tuple[str, list[Row | Skip]]:
    """Encode a piece that an actor annotated (``node``: where it was decoded)."""
    return node, _pipeline(spec).finish(prepared, annotations)


def _write(spec: _Spec, index: int, inputs: int, pieces: list[Any]) -> ShardSummary:
    """Gather a shard's pieces in order and write it: the task that completes the shard.

    ``pieces`` are references, fetched one at a time so that memory holds one piece and one row
    group, never the whole shard."""
    import ray

    nodes = {_node()}

    def fetched() -> Iterator[list[Row | Skip]]:
        for piece in pieces:
            node, results = ray.get(piece)
            nodes.add(node)
            yield results

    summary = write_shard(Path(spec.output), spec.layout, index, inputs, fetched())
    summary.nodes |= nodes
    return summary


class _Annotating:
    """An actor of the accelerator pool (Ray Data ``map_batches`` with this class): loads the models
    once, then takes whole shards, one row of the dataset each, through decode (CPU tasks),
    annotate (here, a piece of ``--batch-size`` images at a time), encode (CPU tasks) and write."""

    def __init__(self, spec: _Spec, actor_spec: _Spec) -> None:
        import ray

        self.spec = spec
        self.pipeline = _pipeline(actor_spec)
        self.failure: AnnotatorLoadError | None = None
        try:
            self.pipeline.load_all()
        except AnnotatorLoadError as err:  # reported by each call: Ray Data gives the driver an actor's errors as text only
            self.failure = err
        self.prepare = ray.remote(num_cpus=1)(_prepare)
        self.finish = ray.remote(num_cpus=1)(_finish)
        self.write = ray.remote(num_cpus=0)(_write)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[bytes]]:
        """A pickled :class:`ShardSummary` per shard (or the error that kept the models from loading)."""
        import ray

        if self.failure is not None:
            return {"summary": [pickle.dumps(self.failure)] * len(batch["index"])}
        summaries = []
        for index, inputs, encoded in zip(batch["index"], batch["inputs"], batch["pieces"]):
            pieces: list[list[SourceItem]] = pickle.loads(encoded)  # written by this build's driver
            waiting = iter(pieces)
            decoding = deque(self.prepare.remote(self.spec, piece) for piece in _take(waiting, LOOKAHEAD))
            finished = []
            while decoding:
                node, prepared = ray.get(decoding.popleft())
                decoding.extend(self.prepare.remote(self.spec, piece) for piece in _take(waiting, 1))
                annotations = self.pipeline.annotations(prepared)
                lean = [entry.without_pixels() if isinstance(entry, Prepared) else entry for entry in prepared]
                finished.append(self.finish.remote(self.spec, node, lean, annotations))
            summary: ShardSummary = ray.get(self.write.remote(self.spec, int(index), int(inputs), finished))
            summary.nodes.add(_node())
            summaries.append(pickle.dumps(summary))
        return {"summary": summaries}


def _take(items: Iterator[Any], count: int) -> list[Any]:
    return [item for _, item in zip(range(count), items)]


# --------------------------------------------------------------------------- on the driver


def plan(pending: Iterable[tuple[int, SourceItem]], shard_size: int, taken: set[int]) -> Iterator[tuple[int, list[SourceItem]]]:
    """Shards of the pending inputs, given with their positions in the source: positions
    ``k*S .. k*S+S-1`` go to shard ``k``. Where a finished shard already has that number (left by
    a build with another ``--shard-size``, the local engine, or before inputs were added), its
    pending inputs go to new shards after all others instead, so that nothing is overwritten."""
    leftovers: list[SourceItem] = []
    current, items, last = -1, [], max(taken, default=-1)
    for position, item in pending:
        index = position // shard_size
        if index != current:
            if items:
                yield current, items
            current, items = index, []
            last = max(last, index)
        (leftovers if index in taken else items).append(item)
    if items:
        yield current, items
    for start in range(0, len(leftovers), shard_size):
        last += 1
        yield last, leftovers[start : start + shard_size]


def _chunks(items: list[SourceItem], size: int) -> list[list[SourceItem]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _connect(ray: Any, config: BuildConfig) -> bool:
    """Join the cluster, or start Ray on this machine; True when this call started it (and so
    stops it). A session the caller opened already (a notebook, the tests) is used as it is."""
    if ray.is_initialized():
        return False
    try:
        if config.ray_address is None:
            ray.init(num_cpus=config.workers, include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=config.ray_address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"at {config.ray_address}" if config.ray_address else "on this machine"
        raise BuildError(f"cannot reach Ray {where}: {' '.join(str(err).split())}") from None
    return True


def _on_device(config: AnnotatorConfig) -> AnnotatorConfig:
    """An annotator's config for an actor: Ray gives each actor its GPUs as ``cuda:0``.., so a
    device index chosen for one machine (``cuda:1``) becomes ``cuda``."""
    device = getattr(config, "device", None)
    if isinstance(device, str) and device.startswith("cuda:"):
        return dataclasses.replace(config, device="cuda")  # type: ignore[type-var]
    return config


def _actor_pool(ray: Any, config: BuildConfig) -> tuple[int, float]:
    """How many annotating actors, and the GPUs each reserves (none for other accelerators)."""
    resources = ray.cluster_resources()
    gpus = config.ray_gpus_per_actor if any(a.device.startswith("cuda") for a in config.instances()) else 0.0
    if gpus and resources.get("GPU", 0) < gpus:
        raise BuildError(f"the annotators run on CUDA but the Ray cluster has {resources.get('GPU', 0):g} GPUs; add GPU nodes or use --device cpu")
    actors = config.ray_actors or (int(resources["GPU"] // gpus) if gpus else 1)
    if resources.get("CPU", 0) < actors + 1:  # each actor holds a CPU; decoding and encoding need more
        raise BuildError(f"{actors} annotating actors need more than {actors} CPUs in the Ray cluster, which has {resources.get('CPU', 0):g}")
    return actors, gpus


def _cpu_pieces(ray: Any, spec: Any, shards: Iterable[tuple[int, list[SourceItem]]], chunk: int) -> Iterator[tuple[int, int, list[Any]]]:
    """Submit every piece of each shard as a task; yield the shard with its pieces' references."""
    process = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_process)
    for index, items in shards:
        yield index, len(items), [process.remote(spec, piece) for piece in _chunks(items, chunk)]


def _written(ray: Any, spec: Any, shards: Iterator[tuple[int, int, list[Any]]], window: int) -> Iterator[ShardSummary]:
    """A write task per shard; summaries in shard order. Shards are taken from ``shards`` (which
    submits their pieces) while fewer than ``window`` pieces wait beyond the oldest shard: enough
    to keep every CPU busy across shard boundaries, and a bound on memory."""
    # A write task mostly waits for its pieces; it takes no CPU, so it never keeps a piece waiting.
    write = ray.remote(num_cpus=0)(_write)
    in_flight: deque[tuple[Any, int]] = deque()
    queued = 0
    try:
        for index, inputs, pieces in shards:
            in_flight.append((write.remote(spec, index, inputs, pieces), len(pieces)))
            queued += len(pieces)
            while in_flight and queued - in_flight[0][1] >= window:
                ref, count = in_flight.popleft()
                queued -= count
                yield ray.get(ref)
        while in_flight:
            yield ray.get(in_flight[0][0])
            in_flight.popleft()
    finally:  # stopped early (an error, Ctrl-C): shards not yet written are left for the next run
        for ref, _ in in_flight:
            ray.cancel(ref)


def _actor_summaries(ray: Any, config: BuildConfig, spec: _Spec, shards: Iterable[tuple[int, list[SourceItem]]]) -> Iterator[ShardSummary]:
    """Ray Data over the shards (one row each), mapped by a pool of :class:`_Annotating` actors."""
    import ray.data

    chunk = config.chunk_size()
    rows = [{"index": index, "inputs": len(items), "pieces": pickle.dumps(_chunks(items, chunk))} for index, items in shards]
    if not rows:
        return
    actors, gpus = _actor_pool(ray, config)
    actor_specs = tuple((name, _on_device(annotator_config)) for name, annotator_config in config.annotators)
    actor_spec = dataclasses.replace(spec, key=f"{spec.key}-actor", args=(actor_specs, *spec.args[1:]))
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    dataset.context.execution_options.preserve_order = True  # summaries (and skipped.jsonl) in shard order
    dataset.context.enable_progress_bars = False  # the build reports its own progress
    dataset = dataset.map_batches(
        _Annotating,
        fn_constructor_args=(spec, actor_spec),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=1,
    )
    quiet = logging.getLogger("ray.data")  # its plan and timings would interleave with the build's progress
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for row in dataset.iter_rows():
            summary = pickle.loads(row["summary"])
            if isinstance(summary, AnnotatorLoadError):
                raise summary
            yield summary
    finally:
        quiet.setLevel(level)


def _load_error(ray: Any, err: BaseException | None) -> AnnotatorLoadError | None:
    """The AnnotatorLoadError behind a task's or a dataset's error, if that is what it is."""
    while err is not None:
        if isinstance(err, ray.exceptions.RayTaskError):  # a copy of the cause's type, whose text is a traceback
            err = err.cause
        elif isinstance(err, AnnotatorLoadError):
            return err
        else:
            err = err.__cause__
    return None


def run(config: BuildConfig, pending: Iterable[tuple[int, SourceItem]], taken: set[int]) -> Iterator[ShardSummary]:
    """Build the shards of the ``pending`` inputs (with their positions in the source) on Ray,
    leaving the finished shards ``taken`` as they are; a summary per shard, in shard order."""
    ray = require()
    started = _connect(ray, config)
    try:
        args = pipeline_args(config)
        classes = tuple((name, annotators.get_class(name)) for name, _ in config.annotators)
        spec = _Spec(uuid.uuid4().hex, classes, args, str(config.output), config.layout())
        shards = plan(pending, config.shard_size, taken)
        try:
            if config.is_central:
                yield from _actor_summaries(ray, config, spec, shards)
            else:
                cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
                spec_ref = ray.put(spec)
                yield from _written(ray, spec_ref, _cpu_pieces(ray, spec_ref, shards, config.chunk_size()), 2 * cpus)
        except Exception as err:
            cause = _load_error(ray, err)
            if cause is not None:  # a fault of the set-up: one line
                raise BuildError(str(cause)) from None
            raise
    finally:
        if started:
            ray.shutdown()
