"""Training data for ControlNet: cn-annotate datasets, paired transforms, resumable batch order.

Every random choice that touches a sample (crop offset, flip, dropping its prompt) is drawn from a
generator seeded by ``(seed, epoch, row)``, so a sample's tensors depend neither on the number of
data-loader workers nor on whether the run was interrupted. The batch order is a fixed function of
``(seed, epoch)`` too, and the data position saved in a checkpoint is ``(epoch, batch)``: resuming
continues exactly where the killed run was.

Images are decoded by :mod:`annotators.image` (EXIF orientation applied, alpha composited over
white), as the annotators see them, not by the datasets library. Each example records the geometry
of its crop (the image's original size and the crop's top-left corner in the resized image), which
SDXL's micro-conditioning takes as input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


class DataError(ValueError):
    """The dataset cannot be used for training (missing column, too few rows)."""


@dataclass(frozen=True)
class CroppedPair:
    """A transformed pair and where it was cut from: ``original_size`` is the image's (height, width)
    before resizing, ``crop_top_left`` the crop's (top, left) corner in the resized image (mirrored
    when the pair was flipped, so that it names the crop as seen in the flipped image)."""

    pixels: torch.Tensor
    condition: torch.Tensor | None
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


@dataclass(frozen=True)
class PairTransform:
    """Resize the shorter side to ``resolution`` and crop a square; the condition map gets the same
    geometry as the image (it is first brought to the image's size if the two differ)."""

    resolution: int
    center_crop: bool = True
    random_flip: bool = False

    def __call__(
        self, image: Image.Image, condition: Image.Image, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.crop(image, condition, rng)
        return pair.pixels, pair.condition

    def crop(self, image: Image.Image, condition: Image.Image | None, rng: np.random.Generator) -> CroppedPair:
        """The pair's crop; without a condition (latent caching), the image's alone."""
        image = image.convert("RGB")
        width, height = image.size
        scale = self.resolution / min(width, height)
        size = (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale)))
        # Bilinear for both, so that a condition equal to its image stays equal after the transform.
        image = image.resize(size, Image.Resampling.BILINEAR)
        cond = None
        if condition is not None:
            condition = condition.convert("RGB")
            if condition.size != (width, height):
                condition = condition.resize((width, height), Image.Resampling.BILINEAR)
            cond = condition.resize(size, Image.Resampling.BILINEAR)
        spare_x, spare_y = size[0] - self.resolution, size[1] - self.resolution
        if self.center_crop:
            left, top = spare_x // 2, spare_y // 2
        else:
            left, top = int(rng.integers(0, spare_x + 1)), int(rng.integers(0, spare_y + 1))
        box = (left, top, left + self.resolution, top + self.resolution)
        pixels = np.asarray(image.crop(box), dtype=np.float32)
        cond_pixels = None if cond is None else np.asarray(cond.crop(box), dtype=np.float32)
        if self.random_flip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
            cond_pixels = None if cond_pixels is None else cond_pixels[:, ::-1]
            left = spare_x - left
        # The image goes to the VAE in [-1, 1]; the condition goes to the ControlNet in [0, 1].
        image_tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))) / 127.5 - 1.0
        cond_tensor = None
        if cond_pixels is not None:
            cond_tensor = torch.from_numpy(np.ascontiguousarray(cond_pixels.transpose(2, 0, 1))) / 255.0
        return CroppedPair(image_tensor, cond_tensor, (height, width), (top, left))


@dataclass(frozen=True)
class Columns:
    image: str = "image"
    condition: str = "conditioning_image"
    caption: str = "text"
    sample_id: str = "file_name"


def load_rows(source: str, split: str = "train", revision: str | None = None, streaming: bool = False) -> Any:
    """A cn-annotate dataset: a local folder (``data/*.parquet``) or a Hub dataset id."""
    from datasets import load_dataset

    if Path(source).is_dir():
        return load_dataset(str(source), split=split, streaming=streaming)
    return load_dataset(source, split=split, revision=revision, streaming=streaming)


def undecoded(rows: Any, names: Iterable[str]) -> Any:
    """``rows`` with its image columns ``names`` left encoded, for :func:`decode` (a column that is
    not a datasets ``Image`` is left as it is)."""
    from datasets import Image as ImageFeature

    features = rows.features or {}
    for name in names:
        feature = features.get(name)
        if isinstance(feature, ImageFeature) and feature.decode:
            rows = rows.cast_column(name, ImageFeature(decode=False))
    return rows


def decode(value: Any, column: str) -> np.ndarray:
    """HxWx3 uint8 RGB from a dataset cell: an undecoded image (bytes or a path), or a path."""
    from annotators.image import decode_image

    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        data = value.get("bytes") or value["path"]
        return decode_image(data, source=value.get("path") or f"column {column!r}")
    if isinstance(value, (str, Path)):
        return decode_image(value)
    raise DataError(f"column {column!r} holds {type(value).__name__}, not an image")


def check_columns(names: list[str] | None, columns: Columns) -> None:
    if names is None:  # some streamed datasets do not announce their columns
        return
    for role, column in (("image", columns.image), ("conditioning", columns.condition), ("caption", columns.caption)):
        if column not in names:
            raise DataError(f"dataset has no {role} column {column!r}; columns: {', '.join(names)}")


def sample_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, row])


def make_example(
    row: dict[str, Any], row_id: Any, rng: np.random.Generator, transform: PairTransform, columns: Columns,
    empty_prompt_prob: float,
) -> dict[str, Any]:
    # The draw order (prompt first, then geometry) is fixed so a sample's randomness never shifts.
    drop_prompt = rng.random() < empty_prompt_prob
    image = Image.fromarray(decode(row[columns.image], columns.image))
    condition = Image.fromarray(decode(row[columns.condition], columns.condition))
    pair = transform.crop(image, condition, rng)
    caption = row[columns.caption]
    if isinstance(caption, (list, tuple)):  # several captions per image: pick one
        caption = caption[int(rng.integers(0, len(caption)))] if caption else ""
    return {
        "pixel_values": pair.pixels,
        "conditioning_pixel_values": pair.condition,
        "caption": "" if drop_prompt else str(caption or ""),
        "sample_id": row.get(columns.sample_id, row_id),
        "row": row_id if isinstance(row_id, int) else None,
        "geometry": (*pair.original_size, *pair.crop_top_left),
    }


class PairDataset(torch.utils.data.Dataset):
    """Map-style view of a dataset, indexed by ``(epoch, row)`` so that per-sample randomness is
    reproducible."""

    def __init__(
        self, rows: Any, transform: PairTransform, columns: Columns, empty_prompt_prob: float, seed: int
    ) -> None:
        check_columns(list(rows.column_names), columns)
        self.rows = undecoded(rows, (columns.image, columns.condition))
        self.transform = transform
        self.columns = columns
        self.empty_prompt_prob = empty_prompt_prob
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, row = key
        rng = sample_rng(self.seed, epoch, row)
        return make_example(self.rows[row], row, rng, self.transform, self.columns, self.empty_prompt_prob)


@dataclass(frozen=True)
class Position:
    """Where the next batch starts: ``batch`` counts global batches (over all processes) in ``epoch``."""

    epoch: int = 0
    batch: int = 0


class EpochBatchSampler(torch.utils.data.Sampler):
    """Endless batches of ``(epoch, row)`` keys for one process, from ``start`` on.

    Each epoch is a permutation of the rows seeded by ``(seed, epoch)``, cut into global batches of
    ``batch_size * world_size`` rows (an incomplete last one is dropped); process ``rank`` takes its
    slice of each global batch.
    """

    def __init__(
        self, rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
        start: Position = Position(),
    ) -> None:
        self.global_batch = batch_size * world_size
        if rows < self.global_batch:
            raise DataError(
                f"dataset has {rows} rows, fewer than one global batch ({batch_size} x {world_size} processes)"
            )
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.rank, self.shuffle, self.start = rank, shuffle, start
        self.batches_per_epoch = rows // self.global_batch

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.rows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.rows)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, first = self.start.epoch, self.start.batch
        while True:
            order = self.order(epoch)
            for batch in range(first, self.batches_per_epoch):
                begin = batch * self.global_batch + self.rank * self.batch_size
                yield [(epoch, int(row)) for row in order[begin : begin + self.batch_size]]
            epoch, first = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62

    def advance(self, position: Position) -> Position:
        """The position after the batch that starts at ``position``."""
        if position.batch + 1 >= self.batches_per_epoch:
            return Position(position.epoch + 1, 0)
        return Position(position.epoch, position.batch + 1)


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "conditioning_pixel_values": torch.stack([e["conditioning_pixel_values"] for e in examples]),
        "captions": [e["caption"] for e in examples],
        "sample_ids": [e["sample_id"] for e in examples],
        "rows": [e["row"] for e in examples],  # dataset row indices (None when streamed)
        # original height, original width, crop top, crop left: SDXL's size conditioning
        "geometry": torch.tensor([e["geometry"] for e in examples], dtype=torch.float32),
    }


def map_batches(
    rows: Any, transform: PairTransform, columns: Columns, empty_prompt_prob: float, seed: int, batch_size: int,
    rank: int, world_size: int, start: Position, workers: int, shuffle: bool = True,
) -> Iterator[tuple[dict[str, Any], Position]]:
    """Endless (batch, position after it) pairs from an in-memory or memory-mapped dataset."""
    dataset = PairDataset(rows, transform, columns, empty_prompt_prob, seed)
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, rank, world_size, shuffle, start)
    # The loader's own generator keeps it from drawing on the global torch RNG.
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
        generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
    )
    position = start
    for batch in loader:
        position = sampler.advance(position)
        yield batch, position


def stream_batches(
    rows: Any, transform: PairTransform, columns: Columns, empty_prompt_prob: float, seed: int, batch_size: int,
    rank: int, world_size: int, start: Position, shuffle_buffer: int,
) -> Iterator[tuple[dict[str, Any], Position]]:
    """Endless (batch, position after it) pairs from a streamed dataset larger than memory.

    Here ``Position.batch`` counts this process's batches in the epoch; resuming skips that many
    batches' rows of the (deterministically) shuffled stream.
    """
    from datasets.distributed import split_dataset_by_node

    check_columns(list(rows.column_names) if rows.column_names else None, columns)
    shard = split_dataset_by_node(undecoded(rows, (columns.image, columns.condition)), rank=rank, world_size=world_size)
    if shuffle_buffer > 1:
        shard = shard.shuffle(seed=seed, buffer_size=shuffle_buffer)
    epoch, first = start.epoch, start.batch
    while True:
        # skip() first: the epoch set on a dataset does not carry over to one derived from it.
        stream = shard.skip(first * batch_size) if first else shard
        stream.set_epoch(epoch)
        batch_index, examples = first, []
        for offset, row in enumerate(stream, start=first * batch_size):
            rng = sample_rng(seed, epoch, offset * world_size + rank)
            examples.append(
                make_example(row, f"{epoch}:{rank}:{offset}", rng, transform, columns, empty_prompt_prob)
            )
            if len(examples) == batch_size:
                batch_index += 1
                yield collate(examples), Position(epoch, batch_index)
                examples = []
        if batch_index == 0:
            raise DataError(f"streamed dataset gave process {rank} fewer than {batch_size} rows in an epoch")
        epoch, first = epoch + 1, 0


def cropped_images(rows: Any, indices: range, transform: PairTransform, columns: Columns) -> torch.Tensor:
    """The target images of ``rows[indices]`` cropped as their training examples are (what the
    latent cache encodes; it needs a crop that does not vary: centre crop, no flip)."""
    if not transform.center_crop or transform.random_flip:
        raise DataError("cached latents need the same crop every epoch: centre crop and no flip")
    unused = np.random.default_rng(0)  # a centre crop without flip draws nothing
    images = [Image.fromarray(decode(rows[i][columns.image], columns.image)) for i in indices]
    return torch.stack([transform.crop(image, None, unused).pixels for image in images])
