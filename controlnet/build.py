"""The streaming dataset builder: images in, a paired ControlNet training set out.

    build(BuildConfig(input="./images", output=Path("./ds"), annotators=(("canny", CannyConfig()),)))

Output (the Hub's repository layout, read by ``datasets.load_dataset(OUT, split="train")``)::

    OUT/README.md                   dataset card, with the YAML ``configs`` the Hub viewer reads
    OUT/data/train-00000.parquet    shards of ``shard_size`` rows, image bytes embedded
    OUT/build.json                  the build's identity, compared when the command is run again
    OUT/skipped.jsonl               one record per input that was skipped, with its reason

Columns: ``image`` and ``conditioning_image`` (the defaults of diffusers' ``train_controlnet.py``),
``text``, ``file_name`` (relative to the input) and ``annotator``. With several annotators,
``conditioning_image`` holds the first one's map and each annotator also gets a column named after
its id. Annotators that find structured data (OpenPose keypoints) add ``keypoints`` (JSON).

Pipeline: inputs are read in order and processed in chunks by a pool of worker processes (decode,
resize, annotate, encode); at most a few chunks per worker are in flight, so memory does not grow
with the number of images. Results come back in input order and are appended to the open shard,
written to a hidden temporary file and renamed when complete. Resuming reads which ``file_name``s
the finished shards and ``skipped.jsonl`` hold, so no input is done twice or lost. With a GPU, one
process (this one) loads the model and annotates in batches; the workers only decode and encode.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import annotators
from annotators.base import Annotation, Annotator, AnnotatorConfig
from annotators.image import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    decode_image_info,
    encode_png,
    resize_image,
    resized_size,
)
from annotators.neural import NeuralAnnotator
from controlnet.sources import DEFAULT_PROMPT, Source, SourceItem, open_source

__all__ = [
    "BuildConfig",
    "BuildError",
    "BuildProgress",
    "BuildResult",
    "build",
    "count_keypoints",
    "default_workers",
]

BUILD_FILE = "build.json"
SKIPPED_FILE = "skipped.jsonl"
DATA_DIR = "data"
SHARD_PREFIX = "train-"
#: Source formats whose bytes are stored unchanged when no resize is needed; others become PNG.
KEPT_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
JPEG_QUALITY = 95
_FORMAT_VERSION = 1


class BuildError(RuntimeError):
    """A build that cannot start (or continue), with a one-line reason for the user."""


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build needs; :meth:`identity` is what must match to resume into ``output``."""

    input: str
    output: Path
    annotators: tuple[tuple[str, AnnotatorConfig], ...]
    resolution: int = 512
    keep_size: bool = False
    prompt: str = DEFAULT_PROMPT
    image_column: str | None = None
    caption_column: str | None = None
    split: str = "train"
    workers: int = field(default_factory=default_workers)
    batch_size: int | None = None  # images per task; default: the annotators' batch size, else 8
    shard_size: int = 1000
    min_keypoints: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    central: bool | None = None  # one annotating process; None: when an annotator runs on a GPU

    def __post_init__(self) -> None:
        if not self.annotators:
            raise ValueError("at least one annotator is needed")
        ids = [name for name, _ in self.annotators]
        if len(set(ids)) != len(ids):
            raise ValueError(f"an annotator is named twice: {', '.join(ids)}")
        for name, value, low in (("workers", self.workers, 1), ("shard_size", self.shard_size, 1), ("resolution", self.resolution, 64), ("min_keypoints", self.min_keypoints, 0)):
            if value < low:
                raise ValueError(f"{name} must be at least {low}, got {value}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def identity(self, source: Source) -> dict[str, Any]:
        """What determines the dataset's content: annotators and their output parameters, sizing,
        captions' default and the input. Runtime options (workers, device, batch size) are left out."""
        return _jsonable(
            {
                "format": _FORMAT_VERSION,
                "annotators": {name: config.identity() for name, config in self.annotators},
                "resolution": None if self.keep_size else self.resolution,
                "prompt": self.prompt,
                "min_keypoints": self.min_keypoints,
                "max_pixels": self.max_pixels,
                "input": source.identity,
            }
        )

    @property
    def is_central(self) -> bool:
        if self.central is not None:
            return self.central
        return any(getattr(config, "device", "cpu") != "cpu" for _, config in self.annotators)

    def chunk_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        sizes = [getattr(config, "batch_size", 0) for _, config in self.annotators]
        return max(sizes) if any(sizes) else 8


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


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


# --------------------------------------------------------------------------- per-image work


@dataclass
class _Skip:
    file_name: str
    path: str | None
    reason: str

    @property
    def kind(self) -> str:
        return skip_kind(self.reason)


@dataclass
class _Prepared:
    item: SourceItem
    pixels: np.ndarray
    image: bytes


@dataclass
class _Row:
    file_name: str
    caption: str
    image: bytes
    width: int
    height: int
    maps: list[bytes]
    data: list[str | None]
    has_person: bool | None


_SKIP_KINDS = (
    ("cannot read", "unreadable"),
    ("empty file", "empty"),
    ("not an image", "not an image"),
    ("unsupported", "not an image"),
    ("too large", "too large"),
    ("corrupt", "corrupt"),
    ("keypoints", "too few keypoints"),
    ("failed", "annotator error"),
)


def skip_kind(reason: str) -> str:
    """A short category of a skip reason, for summaries."""
    return next((kind for marker, kind in _SKIP_KINDS if marker in reason), "other")


def count_keypoints(data: dict[str, Any] | None) -> int:
    """Body keypoints found (confidence > 0) over all people of an OpenPose-style result."""
    if not data:
        return 0
    total = 0
    for person in data.get("people") or []:
        triplets = person.get("pose_keypoints_2d") or []
        total += sum(1 for i in range(2, len(triplets), 3) if triplets[i] > 0)
    return total


def _json_value(value: Any) -> Any:
    """numpy scalars and arrays in annotators' data, as JSON numbers and lists."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_image(pixels: np.ndarray, source_format: str) -> bytes:
    """A resized (or converted) input image: JPEG stays JPEG (quality 95), anything else PNG."""
    if source_format == "JPEG":
        ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return buffer.tobytes()
    return encode_png(pixels)


class Pipeline:
    """The work done for each image; one instance per worker process, annotators loaded once."""

    def __init__(self, specs: tuple[tuple[str, AnnotatorConfig], ...], resolution: int | None, max_pixels: int, min_keypoints: int, load_annotators: bool = True) -> None:
        self.resolution = resolution
        self.max_pixels = max_pixels
        self.min_keypoints = min_keypoints
        self.annotators: list[Annotator] = [annotators.get_class(name)(config) for name, config in specs] if load_annotators else []

    def prepare(self, item: SourceItem) -> _Prepared | _Skip:
        """Read, decode and resize one input, and the bytes of the ``image`` column."""
        source = item.path or item.file_name
        data = item.data
        try:
            if data is None:
                try:
                    data = Path(item.path or "").read_bytes()
                except OSError as err:
                    raise ImageError(source, f"cannot read file ({err.strerror or err})") from None
            decoded = decode_image_info(data, source=source, max_pixels=self.max_pixels)
            pixels = decoded.pixels
            if self.resolution is not None:
                height, width = resized_size(pixels.shape[0], pixels.shape[1], self.resolution)
                if height * width > self.max_pixels:  # e.g. a 20000x20 strip, whose short side goes to 512
                    raise ImageError(source, f"image too large once resized ({width}x{height} > {self.max_pixels} pixels)")
                pixels = resize_image(pixels, self.resolution)
            if decoded.plain and decoded.format in KEPT_FORMATS and pixels.shape == decoded.pixels.shape:
                image = data  # nothing changed: keep the file as it is, with no re-encoding
            else:
                image = _encode_image(pixels, decoded.format)
        except ImageError as err:
            return _Skip(item.file_name, item.path, err.reason)
        except (cv2.error, ValueError, MemoryError) as err:  # e.g. an unusable size: skip it, go on
            return _Skip(item.file_name, item.path, f"corrupt or unusable image ({type(err).__name__}: {err})")
        return _Prepared(item, pixels, image)

    def _annotate_all(self, annotator: Annotator, images: list[np.ndarray]) -> list[Annotation | str]:
        """Annotations, or an error message for the images the annotator fails on."""
        try:
            return list(annotator.annotate(images, single_channel=True))
        except Exception:  # find which images fail, so that one bad image does not sink a batch
            results: list[Annotation | str] = []
            for image in images:
                try:
                    results.append(annotator.annotate([image], single_channel=True)[0])
                except Exception as err:
                    results.append(f"annotator {annotator.name} failed ({type(err).__name__}: {err})")
            return results

    def annotate(self, prepared: list[_Prepared | _Skip]) -> list[_Row | _Skip]:
        """Condition maps (PNG) and structured data for each prepared image; skips pass through."""
        ready = [p for p in prepared if isinstance(p, _Prepared)]
        images = [p.pixels for p in ready]
        for annotator in self.annotators:  # a model that cannot load fails the build, not each image
            if isinstance(annotator, NeuralAnnotator) and images:
                annotator.load()
        per_annotator = [self._annotate_all(a, images) if images else [] for a in self.annotators]
        finished: dict[int, _Row | _Skip] = {}
        for index, entry in enumerate(ready):
            item = entry.item
            results = [column[index] for column in per_annotator]
            failure = next((r for r in results if isinstance(r, str)), None)
            if failure is not None:
                finished[id(entry)] = _Skip(item.file_name, item.path, failure)
                continue
            annotations: list[Annotation] = results  # type: ignore[assignment]
            finders = [(a, r) for a, r in zip(self.annotators, annotations) if a.finds_data]
            found = [count_keypoints(r.data) for _, r in finders]
            if finders and min(found) < self.min_keypoints:
                finished[id(entry)] = _Skip(item.file_name, item.path, f"{min(found)} body keypoints found, fewer than --min-keypoints {self.min_keypoints}")
                continue
            height, width = entry.pixels.shape[:2]
            wrong = next((a.name for a, r in zip(self.annotators, annotations) if r.map.shape[:2] != (height, width)), None)
            if wrong is not None:
                finished[id(entry)] = _Skip(item.file_name, item.path, f"annotator {wrong} failed (its map is not the image's size)")
                continue
            finished[id(entry)] = _Row(
                file_name=item.file_name,
                caption=item.caption,
                image=entry.image,
                width=width,
                height=height,
                maps=[encode_png(r.map, grayscale=a.grayscale) for a, r in zip(self.annotators, annotations)],
                data=[json.dumps(r.data, default=_json_value) if r.data is not None else None for a, r in finders],
                has_person=any(bool((r.data or {}).get("people")) for _, r in finders) if finders else None,
            )
        return [finished[id(p)] if isinstance(p, _Prepared) else p for p in prepared]

    def process(self, chunk: list[SourceItem]) -> list[_Row | _Skip]:
        if any(isinstance(a, NeuralAnnotator) and a.forward_batch_size > 1 for a in self.annotators):
            return self.annotate([self.prepare(item) for item in chunk])
        # Nothing gains from a batch: take each image through every stage while its pixels are still
        # in the CPU cache (measured about 3% faster than stage by stage over the chunk).
        return [self.annotate([self.prepare(item)])[0] for item in chunk]


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


def _work(chunk: list[SourceItem]) -> list[_Row | _Skip]:
    assert _WORKER is not None
    return _WORKER.process(chunk)


def _work_prepare(chunk: list[SourceItem]) -> list[_Prepared | _Skip]:
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


def _results(config: BuildConfig, items: Iterable[SourceItem]) -> Iterator[list[_Row | _Skip]]:
    """Processed chunks in input order, from this process or a pool with a bounded window."""
    args = (config.annotators, None if config.keep_size else config.resolution, config.max_pixels, config.min_keypoints)
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

        def finish(result: Any) -> list[_Row | _Skip]:
            return annotator.annotate(result) if annotator is not None else result

        for chunk in chunks:
            pending.append(pool.apply_async(_work_prepare if central else _work, (chunk,)))
            if len(pending) >= window:
                yield finish(pending.popleft().get())
        while pending:
            yield finish(pending.popleft().get())


# --------------------------------------------------------------------------- output folder


def condition_columns(names: list[str]) -> list[str]:
    """``conditioning_image``, plus one column per annotator id when there are several."""
    return ["conditioning_image"] + (list(names) if len(names) > 1 else [])


def data_columns(finders: list[str]) -> list[str]:
    """``keypoints`` for the one data-finding annotator, ``keypoints_<id>`` when several."""
    return ["keypoints"] if len(finders) == 1 else [f"keypoints_{name}" for name in finders]


def features(names: list[str], finders: list[str]) -> dict[str, dict[str, str]]:
    """The columns as ``datasets`` feature dicts (what ``Features.to_dict()`` gives)."""
    image = {"_type": "Image"}
    columns: dict[str, dict[str, str]] = {"image": image}
    columns.update({name: image for name in condition_columns(names)})
    columns.update(
        {
            "text": {"dtype": "string", "_type": "Value"},
            "file_name": {"dtype": "string", "_type": "Value"},
            "annotator": {"dtype": "string", "_type": "Value"},
            "width": {"dtype": "int32", "_type": "Value"},
            "height": {"dtype": "int32", "_type": "Value"},
        }
    )
    columns.update({name: {"dtype": "string", "_type": "Value"} for name in data_columns(finders)})
    return columns


def arrow_schema(names: list[str], finders: list[str]) -> Any:
    """The Parquet schema, with the ``huggingface`` metadata through which ``datasets`` sees Image
    features. Written by hand, equal to ``datasets.Features(...).arrow_schema``, so that building
    does not import ``datasets`` (a second of start-up and about 100 MB per process)."""
    import pyarrow as pa

    types = {"Image": pa.struct([("bytes", pa.binary()), ("path", pa.string())]), "string": pa.string(), "int32": pa.int32()}
    columns = features(names, finders)
    fields = [pa.field(name, types[feature.get("dtype", feature["_type"])]) for name, feature in columns.items()]
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": columns}})})


def shard_paths(output: Path) -> list[Path]:
    return sorted((output / DATA_DIR).glob(f"{SHARD_PREFIX}*.parquet"))


class ShardWriter:
    """Appends rows to ``data/train-NNNNN.parquet`` shards: each is written as a hidden temporary
    file in row groups and renamed into place once it holds ``shard_size`` rows (or at the end)."""

    ROW_GROUP = 100  # rows buffered in memory; also a good page size for the Hub's viewer
    ROW_GROUP_BYTES = 128 * 2**20  # ... or fewer when they are large, to bound memory (and stay far below Arrow's 2 GiB per binary array)

    def __init__(self, output: Path, schema: Any, names: list[str], finders: list[str], shard_size: int, next_index: int) -> None:
        self.data_dir = output / DATA_DIR
        self.schema = schema
        self.names = names
        self.annotator = ",".join(names)
        self.condition_columns = condition_columns(names)
        self.data_columns = data_columns(finders)
        self.shard_size = shard_size
        self.index = next_index
        self.buffer: list[_Row] = []
        self.buffered_bytes = 0
        self.rows_in_shard = 0
        self.writer: Any = None
        self.on_shard: Callable[[], None] | None = None

    def _tmp_path(self) -> Path:
        return self.data_dir / f".{SHARD_PREFIX}{self.index:05d}.parquet.tmp"

    def add(self, row: _Row) -> None:
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

        columns: dict[str, Any] = {"image": image_column([r.image for r in rows], file_names)}
        for position, name in enumerate(self.condition_columns):
            source = 0 if position == 0 else position - 1
            columns[name] = image_column([r.maps[source] for r in rows], None)
        columns["text"] = [r.caption for r in rows]
        columns["file_name"] = file_names
        columns["annotator"] = [self.annotator] * len(rows)
        columns["width"] = [r.width for r in rows]
        columns["height"] = [r.height for r in rows]
        for position, name in enumerate(self.data_columns):
            columns[name] = [r.data[position] for r in rows]
        table = pa.Table.from_pydict(columns, schema=self.schema)
        if self.writer is None:
            # The encoded images neither compress nor repeat: no compression, dictionary or statistics for them.
            small = ["text", "file_name", "annotator", "width", "height", *self.data_columns]
            self.writer = pq.ParquetWriter(
                self._tmp_path(),
                self.schema,
                compression={name: "snappy" for name in small},
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
        os.replace(tmp, self.data_dir / f"{SHARD_PREFIX}{self.index:05d}.parquet")
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

    def add(self, skip: _Skip) -> None:
        self.handle.write(json.dumps({"file_name": skip.file_name, "path": skip.path, "reason": skip.reason}) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _describe_change(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in list(dict.fromkeys([*before, *after])):
        old, new = before.get(key, "(none)"), after.get(key, "(none)")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _describe_change(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


_OWN_ENTRIES = ("README.md", BUILD_FILE, SKIPPED_FILE)


def _clear(output: Path) -> None:
    """Remove what a build wrote (and only that)."""
    for name in _OWN_ENTRIES:
        (output / name).unlink(missing_ok=True)
    data = output / DATA_DIR
    if data.is_dir():
        for path in data.iterdir():
            if path.name.startswith((SHARD_PREFIX, f".{SHARD_PREFIX}")):
                path.unlink()
        if not any(data.iterdir()):
            data.rmdir()


def prepare_output(output: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Check that ``output`` is new, empty, or a build of the same identity (refused otherwise,
    unless ``overwrite``), and record the identity there."""
    build_file = output / BUILD_FILE
    if output.exists() and not output.is_dir():
        raise BuildError(f"{output} is a file; the output of a dataset build is a folder")
    if output.is_dir() and any(output.iterdir()):
        if not build_file.is_file():
            raise BuildError(f"{output} is not empty and holds no cn-annotate dataset ({BUILD_FILE} is missing); choose a new or empty folder")
        try:
            previous = json.loads(build_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise BuildError(f"{build_file} cannot be read ({err}); use --overwrite to start again") from None
        if overwrite:
            _clear(output)
        elif previous != identity:
            changes = "; ".join(_describe_change(previous, identity))
            raise BuildError(f"{output} was built with other settings ({changes}). Use --overwrite to replace it, or choose another output folder")
    (output / DATA_DIR).mkdir(parents=True, exist_ok=True)
    tmp = output / f".{BUILD_FILE}.tmp"
    tmp.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, build_file)


def _finished_state(output: Path, finders: list[str]) -> tuple[set[str], int, int, int, list[dict[str, Any]]]:
    """From the finished shards: file names done, rows, images with no person, next shard index,
    and a few preview rows. Temporary files of an interrupted shard are removed."""
    import pyarrow.parquet as pq

    for stale in (output / DATA_DIR).glob(f".{SHARD_PREFIX}*.tmp"):
        stale.unlink()
    done: set[str] = set()
    rows = no_person = 0
    next_index = 0
    preview: list[dict[str, Any]] = []
    keypoint_columns = data_columns(finders) if finders else []
    for path in shard_paths(output):
        table = pq.read_table(path, columns=["file_name", "text", "width", "height", *keypoint_columns])
        names = table.column("file_name").to_pylist()
        done.update(names)
        rows += len(names)
        if keypoint_columns:
            for value in table.column(keypoint_columns[0]).to_pylist():
                no_person += not (json.loads(value) or {}).get("people") if value else 1
        if len(preview) < 5:
            preview += table.select(["file_name", "text", "width", "height"]).slice(0, 5 - len(preview)).to_pylist()
        next_index = max(next_index, int(path.stem.removeprefix(SHARD_PREFIX)) + 1)
    return done, rows, no_person, next_index, preview


# --------------------------------------------------------------------------- the build


def _check_weights(config: BuildConfig) -> None:
    """Find every checkpoint before starting, so that missing weights stop the build with the
    lookup's explanation instead of skipping every image."""
    from annotators.weights import WeightsNotFoundError

    for name, annotator_config in config.annotators:
        annotator = annotators.get_class(name)(annotator_config)
        if isinstance(annotator, NeuralAnnotator):
            try:
                annotator.checkpoint_paths()
            except WeightsNotFoundError as err:
                raise BuildError(f"{name}: {err}") from None


def build(config: BuildConfig, progress: Callable[[BuildProgress], None] | None = None, source: Source | None = None) -> BuildResult:
    """Build (or resume) the dataset described by ``config``; see the module docstring.

    ``progress`` is called once before the first image and after each chunk. Raises
    :class:`BuildError` for an output folder that cannot be used and
    :class:`controlnet.sources.SourceError` for an input that cannot be read. On Ctrl-C the rows
    already annotated are written as a finished shard before ``KeyboardInterrupt`` propagates.
    """
    from controlnet import card

    output = config.output
    if source is None:
        source = open_source(
            config.input,
            prompt=config.prompt,
            image_column=config.image_column,
            caption_column=config.caption_column,
            split=config.split,
            exclude=output,
        )
    names = [name for name, _ in config.annotators]
    _check_weights(config)
    finders = [name for name, _ in config.annotators if annotators.get_class(name).finds_data]
    identity = config.identity(source)
    prepare_output(output, identity, config.overwrite)

    done, rows_before, no_person, next_index, preview = _finished_state(output, finders)
    skip_log = SkipLog(output / SKIPPED_FILE)
    done |= skip_log.keys()
    kinds = skip_log.kinds()
    skipped_before = len(skip_log.records)
    state = BuildProgress(total=len(source), done_before=len(done))
    schema = arrow_schema(names, finders)
    writer = ShardWriter(output, schema, names, finders, config.shard_size, next_index)

    versions = card.package_versions(any(annotators.get_class(n).needs_weights for n in names))

    def write_card() -> None:
        card.write_card(
            output,
            card.CardInfo(
                identity=identity,
                annotators=names,
                columns=list(schema.names),
                rows=rows_before + state.rows,
                skip_kinds=dict(kinds),
                no_person=no_person if finders else None,
                preview=preview,
                versions=versions,
                data_bytes=sum(shard.stat().st_size for shard in (output / "data").glob("train-*.parquet")),
            ),
        )

    writer.on_shard = write_card
    write_card()
    if progress is not None:
        progress(state)
    started = time.perf_counter()
    pending = (item for item in source if item.file_name not in done)
    if state.total - state.done_before <= config.chunk_size():  # one task's worth: a pool would only cost
        config = dataclasses.replace(config, workers=1)
    try:
        for results in _results(config, pending):
            for result in results:
                if isinstance(result, _Skip):
                    skip_log.add(result)
                    kinds[result.kind] += 1
                    state.skipped += 1
                else:
                    writer.add(result)
                    state.rows += 1
                    no_person += result.has_person is False
                    if len(preview) < 5:
                        preview.append({"file_name": result.file_name, "text": result.caption, "width": result.width, "height": result.height})
            if progress is not None:
                progress(state)
    except BaseException:  # Ctrl-C included: the buffered rows are complete, so keep them if we can
        try:
            writer.close()
        except Exception:
            writer.abort()
        raise
    else:
        writer.close()
    finally:
        skip_log.close()
        write_card()
    return BuildResult(
        output=output,
        rows=rows_before + state.rows,
        skipped=skipped_before + state.skipped,
        rows_added=state.rows,
        skipped_added=state.skipped,
        seconds=time.perf_counter() - started,
        skip_kinds=dict(kinds),
    )

