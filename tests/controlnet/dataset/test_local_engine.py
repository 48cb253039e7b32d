"""The local engine's chunking: plain chunks, and the last ones cut finer so that workers finish together."""

from __future__ import annotations

from controlnet.dataset.engines.local import _chunks
from controlnet.dataset.sources import SourceItem


def _items(count: int) -> list[SourceItem]:
    return [SourceItem(f"{index}.jpg", "") for index in range(count)]


def test_chunks_of_the_batch_size_when_the_count_is_unknown() -> None:
    assert [len(c) for c in _chunks(_items(20), 8)] == [8, 8, 4]


def test_the_last_two_rounds_are_cut_finer_down_to_single_inputs() -> None:
    items = _items(60)
    chunks = list(_chunks(items, 8, count=60, workers=2))
    # 8 until fewer than 2 rounds (2 workers x 2 x 8 = 32) are left, then a quarter of what is left
    assert [len(c) for c in chunks] == [8, 8, 8, 8, 7, 6, 4, 3, 2, 2, 1, 1, 1, 1]
    assert [item for chunk in chunks for item in chunk] == items  # the same inputs, in order


def test_a_wrong_count_only_changes_the_sizes() -> None:
    items = _items(10)
    for count in (0, 3, 100):
        assert [item for chunk in _chunks(items, 4, count=count, workers=2) for item in chunk] == items
