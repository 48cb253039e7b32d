"""The local engine's shards when the workers write them: in input order, as many as the workers
can share evenly."""

from __future__ import annotations

from controlnet.dataset.engines.local import shard_plan
from controlnet.dataset.sources import SourceItem


def _items(count: int) -> list[SourceItem]:
    return [SourceItem(f"{index}.jpg", "") for index in range(count)]


def _sizes(count: int, shard_size: int, workers: int, known: int | None = None) -> list[int]:
    plan = list(shard_plan(_items(count), shard_size, count if known is None else known, workers, 7))
    assert [index for index, _ in plan] == list(range(7, 7 + len(plan)))  # numbered on from the first free index
    assert [item for _, shard in plan for item in shard] == _items(count)  # every input once, in order
    return [len(shard) for _, shard in plan]


def test_full_shards_when_they_share_evenly() -> None:
    assert _sizes(4000, 1000, 2) == [1000] * 4
    assert _sizes(4000, 1000, 4) == [1000] * 4


def test_fewer_inputs_than_the_workers_could_take_are_shared_between_them() -> None:
    assert _sizes(1500, 1000, 2) == [750, 750]  # not 1000 and 500: one worker would finish alone
    assert _sizes(2500, 1000, 2) == [625] * 4  # 3 shards, rounded up to 4
    assert _sizes(10, 4, 2) == [3, 3, 3, 1]


def test_an_unknown_or_wrong_count_only_changes_the_sizes() -> None:
    assert _sizes(20, 8, 2, known=0) == [8, 8, 4]
    assert _sizes(10, 4, 2, known=3) == [2, 2, 2, 2, 2]
    assert _sizes(10, 4, 2, known=100) == [4, 4, 2]
