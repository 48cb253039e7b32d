"""Encode once, train many times: VAE latents and text embeddings cached on disk beside the run.

A cache is a folder of safetensors shards of ``SHARD_ROWS`` items each and a manifest holding the
identity of what was encoded (dataset fingerprint, columns, resolution, base model, VAE, dtype). A
run that finds a cache of the same identity (a resumed run, or a new run over the same data) reads
it; any other identity is encoded again. Each process encodes its share of the shards; reading
maps them from disk, so a cache larger than RAM is fine.

Latents are cached as the VAE's distribution parameters (mean and log-variance), not as one sample:
the trainer still draws a fresh latent each step from the run's generator, so a cached run matches
an uncached one draw for draw.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"
CAPTIONS = "captions.json"
SHARD_ROWS = 256


@dataclass(frozen=True)
class Sync:
    """This process's place among the training processes, and a barrier across them."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = field(default=lambda: None)


def _shard_path(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:05d}.safetensors"


def _shards(count: int) -> int:
    return (count + SHARD_ROWS - 1) // SHARD_ROWS


def ensure(
    folder: Path, identity: dict[str, Any], count: int, encode: Callable[[range], dict[str, torch.Tensor]],
    batch: int, sync: Sync, extras: dict[str, str] | None = None,
) -> bool:
    """Make ``folder`` hold ``encode``'s output for items ``0 .. count - 1`` (in batches of
    ``batch``) and the text files ``extras``, unless it already does for ``identity``. Returns
    whether the cache was reused."""
    from safetensors.torch import save_file

    expected = {"identity": identity, "count": count, "shard_rows": SHARD_ROWS}
    manifest = folder / MANIFEST
    reused = manifest.is_file() and json.loads(manifest.read_text()) == expected
    reused = reused and all(_shard_path(folder, s).is_file() for s in range(_shards(count)))
    sync.barrier()  # every process has decided before anything is removed
    if reused:
        return True
    if sync.rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    sync.barrier()
    for shard in range(sync.rank, _shards(count), sync.world):
        start, stop = shard * SHARD_ROWS, min(count, (shard + 1) * SHARD_ROWS)
        parts = [encode(range(i, min(i + batch, stop))) for i in range(start, stop, batch)]
        tensors = {name: torch.cat([p[name] for p in parts]).contiguous().cpu() for name in parts[0]}
        staging = _shard_path(folder, shard).with_suffix(".tmp")
        save_file(tensors, str(staging))
        staging.rename(_shard_path(folder, shard))
    sync.barrier()
    if sync.rank == 0:
        for name, text in (extras or {}).items():
            (folder / name).write_text(text, encoding="utf-8")
        manifest.write_text(json.dumps(expected, indent=2))  # last: a cache without it is incomplete
    sync.barrier()
    return False


class ShardReader:
    """Items of a cache folder by index, read from the memory-mapped shards."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        manifest = json.loads((folder / MANIFEST).read_text())
        self.count, self.shard_rows = int(manifest["count"]), int(manifest["shard_rows"])
        self._handles: dict[int, Any] = {}

    def _handle(self, shard: int) -> Any:
        from safetensors import safe_open

        if shard not in self._handles:
            self._handles[shard] = safe_open(str(_shard_path(self.folder, shard)), framework="pt")
        return self._handles[shard]

    def get(self, name: str, indices: Sequence[int]) -> torch.Tensor:
        rows = []
        for index in indices:
            if not 0 <= index < self.count:
                raise IndexError(f"cache {self.folder.name} has {self.count} items, not {index + 1}")
            shard, offset = divmod(index, self.shard_rows)
            rows.append(self._handle(shard).get_slice(name)[offset : offset + 1])
        return torch.cat(rows)


def distinct_captions(column: Any) -> list[str]:
    """Each caption of a caption column once, in order of appearance, the empty prompt first (a list
    cell holds several captions of one image)."""
    seen: dict[str, None] = {"": None}
    for cell in column:
        for caption in cell if isinstance(cell, (list, tuple)) else [cell]:
            seen.setdefault(str(caption or ""), None)
    return list(seen)


class TextCache:
    """Encoded prompts by caption text: ``hidden`` and, for SDXL, ``pooled``."""

    def __init__(self, folder: Path) -> None:
        self.reader = ShardReader(folder)
        captions = json.loads((folder / CAPTIONS).read_text(encoding="utf-8"))
        self.index = {caption: i for i, caption in enumerate(captions)}
        self.pooled = "pooled" in self.reader._handle(0).keys()  # noqa: SIM118 (safe_open is not a dict)

    @classmethod
    def build(
        cls, folder: Path, identity: dict[str, Any], captions: list[str],
        encode: Callable[[list[str]], dict[str, torch.Tensor]], batch: int, sync: Sync,
    ) -> tuple[TextCache, bool]:
        import hashlib

        digest = hashlib.sha256("\x00".join(captions).encode("utf-8")).hexdigest()
        reused = ensure(
            folder, {**identity, "captions": digest}, len(captions), lambda items: encode([captions[i] for i in items]),
            batch, sync, extras={CAPTIONS: json.dumps(captions, ensure_ascii=False)},
        )
        return cls(folder), reused

    def lookup(self, captions: list[str]) -> dict[str, torch.Tensor]:
        indices = []
        for caption in captions:
            if caption not in self.index:
                raise KeyError(f"caption {caption[:40]!r} is not in the text-embedding cache")
            indices.append(self.index[caption])
        found = {"hidden": self.reader.get("hidden", indices)}
        if self.pooled:
            found["pooled"] = self.reader.get("pooled", indices)
        return found
