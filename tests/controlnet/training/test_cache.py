"""On-disk caches: sharded by process, reused for the same identity, rebuilt for another."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from controlnet.training import cache
from controlnet.training.cache import (
    ShardReader,
    Sync,
    TextCache,
    distinct_captions,
    ensure,
)


def _in_processes(world: int, work) -> list:
    """``work(sync)`` in ``world`` threads standing in for training processes, with a real barrier."""
    barrier = threading.Barrier(world)
    results: list = [None] * world
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            results[rank] = work(Sync(rank, world, barrier.wait))
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_shards_written_by_several_processes_are_read_back_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "SHARD_ROWS", 3)
    encoded: list[int] = []

    def encode(items: range) -> dict[str, torch.Tensor]:
        encoded.extend(items)
        return {"values": torch.tensor([[float(i), -float(i)] for i in items])}

    folder = tmp_path / "latents"
    reused = _in_processes(2, lambda sync: ensure(folder, {"v": 1}, 8, encode, 2, sync))
    assert reused == [False, False] and sorted(encoded) == list(range(8))  # each item once, over both
    assert sorted(p.name for p in folder.glob("shard-*")) == [f"shard-0000{i}.safetensors" for i in range(3)]
    reader = ShardReader(folder)
    assert reader.get("values", [7, 0, 4]).tolist() == [[7.0, -7.0], [0.0, 0.0], [4.0, -4.0]]
    with pytest.raises(IndexError):
        reader.get("values", [8])

    encoded.clear()
    assert _in_processes(2, lambda sync: ensure(folder, {"v": 1}, 8, encode, 2, sync)) == [True, True]
    assert encoded == []  # the same identity: nothing encoded again
    assert ensure(folder, {"v": 2}, 8, encode, 4, Sync()) is False and sorted(encoded) == list(range(8))


def test_text_cache_by_caption(tmp_path: Path) -> None:
    captions = distinct_captions(["a cat", ["a dog", "a cat"], None, "a bird"])
    assert captions == ["", "a cat", "a dog", "a bird"]

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        return {"hidden": torch.tensor([[float(len(t))] * 3 for t in texts]).unsqueeze(1), "pooled": torch.tensor([[float(len(t))] for t in texts])}

    text, reused = TextCache.build(tmp_path / "text", {"base": "b"}, captions, encode, 3, Sync())
    assert not reused
    found = text.lookup(["a bird", "", "a cat"])
    assert found["hidden"][:, 0, 0].tolist() == [6.0, 0.0, 5.0] and found["pooled"][:, 0].tolist() == [6.0, 0.0, 5.0]
    with pytest.raises(KeyError, match="not in the text-embedding cache"):
        text.lookup(["a fish"])
    assert TextCache.build(tmp_path / "text", {"base": "b"}, captions, encode, 3, Sync())[1] is True
