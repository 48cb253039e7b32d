"""Inputs of a dataset build: folders, list files, single images, datasets; and their captions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from controlnet.dataset.sources import (
    DEFAULT_PROMPT,
    DatasetSource,
    FolderSource,
    ListSource,
    SingleImageSource,
    SourceError,
    open_source,
)
from tests.controlnet.helpers import write_photo


def _items(source) -> dict[str, tuple[str, str | None]]:
    return {item.file_name: (item.caption, item.path) for item in source}


def test_folder_is_searched_recursively_in_order(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.PNG", "sub/deeper/c.webp", "sub/d.jpeg"):
        write_photo(tmp_path / name, 0, fmt="PNG" if name.lower().endswith("png") else "JPEG")
    (tmp_path / "notes.md").write_text("not an input")
    (tmp_path / "weights.npz").write_bytes(b"\0")
    write_photo(tmp_path / ".cache" / "hidden.jpg", 1)
    write_photo(tmp_path / "out" / "data.jpg", 1)
    source = open_source(str(tmp_path), exclude=tmp_path / "out")
    assert isinstance(source, FolderSource)
    names = [item.file_name for item in source]
    assert names == ["a.PNG", "b.jpg", "sub/d.jpeg", "sub/deeper/c.webp"]
    assert len(source) == 4
    assert Path(next(iter(source)).path or "") == tmp_path / "a.PNG"


def test_caption_precedence_sidecar_then_metadata_then_prompt(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg", "sub/d.jpg", "sub/e.jpg"):
        write_photo(tmp_path / name, 0)
    (tmp_path / "a.txt").write_text("sidecar caption for a\n")
    rows = [{"file_name": "a.jpg", "text": "metadata loses to the sidecar"}, {"file_name": "b.jpg", "text": "from jsonl"}, {"file_name": "sub/d.jpg", "text": "nested from jsonl"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    (tmp_path / "sub" / "metadata.csv").write_text('file_name,text,other\ne.jpg,"from csv, with a comma",x\n')
    captions = {name: caption for name, (caption, _) in _items(open_source(str(tmp_path), prompt="the prompt")).items()}
    assert captions == {
        "a.jpg": "sidecar caption for a",
        "b.jpg": "from jsonl",
        "c.jpg": "the prompt",
        "sub/d.jpg": "nested from jsonl",
        "sub/e.jpg": "from csv, with a comma",
    }


def test_default_prompt_is_the_papers() -> None:
    assert DEFAULT_PROMPT == "a high-quality, detailed, and professional image"


def test_list_file_paths_are_relative_to_it(tmp_path: Path) -> None:
    write_photo(tmp_path / "imgs" / "one.jpg", 0)
    (tmp_path / "imgs" / "one.txt").write_text("one's caption")
    write_photo(tmp_path / "elsewhere" / "two.png", 1, fmt="PNG")
    listing = tmp_path / "imgs" / "list.txt"
    listing.write_text(f"# images\none.jpg\n\n{tmp_path / 'elsewhere' / 'two.png'}\nmissing.dat\none.jpg\n")
    source = open_source(str(listing))
    assert isinstance(source, ListSource)
    items = _items(source)
    outside = list(items)[1]
    assert list(items) == ["one.jpg", outside, "missing.dat"]
    assert items["one.jpg"] == ("one's caption", str(tmp_path / "imgs" / "one.jpg"))
    assert items[outside][1] == str(tmp_path / "elsewhere" / "two.png")  # read from where it is ...
    assert re.fullmatch(r"[0-9a-f]{8}/two\.png", outside)  # ... named without a path outside the list's folder
    assert items["missing.dat"][0] == DEFAULT_PROMPT


def test_list_entries_outside_its_folder_get_stable_distinct_names_and_no_local_path(tmp_path: Path) -> None:
    for folder in ("a", "b", "list/sub"):
        write_photo(tmp_path / folder / "x.jpg", 0)
    listing = tmp_path / "list" / "files.txt"
    listing.write_text(f"{tmp_path / 'a' / 'x.jpg'}\n../b/x.jpg\nsub/x.jpg\n./sub/../sub/x.jpg\n")
    names = [item.file_name for item in open_source(str(listing))]
    assert len(names) == 3 and names[2] == "sub/x.jpg"  # the same file listed twice is one input
    assert names[0] != names[1] and all(not name.startswith(("/", "..")) and str(tmp_path) not in name for name in names)
    assert names == [item.file_name for item in open_source(str(listing))]  # stable, so a build resumes
    for spec in (str(listing), str(tmp_path / "a"), str(tmp_path / "a" / "x.jpg")):
        identity = json.dumps(open_source(spec).identity)
        assert str(tmp_path) not in identity and "pytest" not in identity


def test_single_image(tmp_path: Path) -> None:
    write_photo(tmp_path / "only.jpg", 2)
    source = open_source(str(tmp_path / "only.jpg"))
    assert isinstance(source, SingleImageSource)
    assert _items(source) == {"only.jpg": (DEFAULT_PROMPT, str(tmp_path / "only.jpg"))}


def test_dataset_folder_with_image_and_caption_columns(tmp_path: Path) -> None:
    import datasets

    payloads = [write_photo(tmp_path / "src" / f"{i}.jpg", i) for i in range(3)]
    table = datasets.Dataset.from_dict(
        {"picture": [{"bytes": payload, "path": None} for payload in payloads], "caption": ["first", "second", "third"]},
        features=datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")}),
    )
    (tmp_path / "ds" / "data").mkdir(parents=True)
    table.to_parquet(str(tmp_path / "ds" / "data" / "train-00000.parquet"))

    with pytest.raises(SourceError, match="no column 'image'"):
        open_source(str(tmp_path / "ds"))
    source = open_source(str(tmp_path / "ds"), image_column="picture", caption_column="caption")
    assert isinstance(source, DatasetSource)
    items = list(source)
    assert [item.file_name for item in items] == ["00000000", "00000001", "00000002"]
    assert [item.caption for item in items] == ["first", "second", "third"]
    assert [item.data for item in items] == payloads


def test_missing_local_path_and_offline_hub_id_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="cannot load the dataset"):
        open_source("someone/some-dataset-that-is-not-cached")  # HF_HUB_OFFLINE=1 in tests
