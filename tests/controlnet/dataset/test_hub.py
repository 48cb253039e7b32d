"""What goes to the Hub: no local path in any file, a card whose YAML huggingface_hub reads (licence,
task categories, pretty name, features, configs) and whose body names the source and the annotators
with their parameters, weights licences and versions; push names the repo in the usage snippet."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from huggingface_hub import DatasetCard

import annotators
from controlnet.dataset.build import BuildConfig, build
from controlnet.dataset.hub import HubError, local_path_files, push_dataset
from tests.controlnet.dataset.test_build import FakeNet, _fake_weights
from tests.controlnet.helpers import write_bad_files, write_photo


def _build(source: Path, output: Path, names: tuple[str, ...] = ("canny",), params: dict[str, dict[str, Any]] | None = None, **options: Any) -> None:
    params = params or {}
    specs = tuple((name, annotators.get_class(name).Config(**params.get(name, {}))) for name in names)
    build(BuildConfig(input=str(source), output=output, annotators=specs, workers=1, resolution=64, **options))


@pytest.fixture()
def built(tmp_path: Path) -> Path:
    folder = tmp_path / "my-photos"
    for i in range(2):
        write_photo(folder / f"{i}.jpg", i, 80, 64)
    write_bad_files(folder / "bad")
    _build(folder, tmp_path / "ds")
    return tmp_path / "ds"


def test_no_local_path_in_what_is_pushed(built: Path, tmp_path: Path) -> None:
    for name in ("build.json", "skipped.jsonl", "README.md"):
        text = (built / name).read_text()
        assert str(tmp_path) not in text and "/tmp" not in text and str(Path.home()) not in text, name
    assert json.loads((built / "build.json").read_text())["input"] == {"kind": "folder", "name": "my-photos"}
    assert local_path_files(built) == []


def test_push_refuses_a_dataset_holding_local_paths(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uploads = _fake_hub(monkeypatch)
    identity = json.loads((built / "build.json").read_text())
    identity["input"] = {"kind": "folder", "path": str(tmp_path / "my-photos")}  # as an older cn-annotate wrote it
    (built / "build.json").write_text(json.dumps(identity))
    with pytest.raises(HubError) as err:
        push_dataset(built, "someone/pairs")
    assert "build.json" in str(err.value) and str(tmp_path) not in str(err.value)
    assert uploads == []


def _fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """huggingface_hub's HfApi, recording what would be uploaded (the card as it is at that moment)."""
    import huggingface_hub

    uploads: list[dict[str, Any]] = []

    class FakeApi:
        def create_repo(self, repo_id: str, **_: Any) -> Any:
            return SimpleNamespace(url=f"https://huggingface.co/datasets/{repo_id}")

        def upload_folder(self, *, folder_path: str, repo_id: str, **kwargs: Any) -> None:
            uploads.append({"repo_id": repo_id, "card": (Path(folder_path) / "README.md").read_text(), **kwargs})

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return uploads


def test_push_names_the_repo_in_the_usage_snippet(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uploads = _fake_hub(monkeypatch)
    assert 'load_dataset("ds", split="train")' in (built / "README.md").read_text()
    url = push_dataset(built, "someone/pairs")
    assert url.endswith("someone/pairs") and len(uploads) == 1
    assert 'dataset = load_dataset("someone/pairs", split="train")' in uploads[0]["card"]
    assert "path/or/repo-id" not in uploads[0]["card"] and '"ds"' not in uploads[0]["card"]


def test_card_yaml_is_what_huggingface_hub_reads(tmp_path: Path, registered) -> None:
    import datasets

    registered("fake_net", FakeNet)
    folder = tmp_path / "photos"
    for i in range(2):
        write_photo(folder / f"{i}.jpg", i, 64, 64)
    output = tmp_path / "ds"
    weights = str(_fake_weights(tmp_path / "weights"))
    _build(folder, output, names=("canny", "fake_net"), params={"canny": {"low_threshold": 50}, "fake_net": {"weights": weights}}, license="cc-by-4.0")

    card = DatasetCard.load(output / "README.md")
    data = card.data
    assert data.license == "cc-by-4.0"
    assert data.task_categories == ["image-to-image", "text-to-image"]
    assert data.pretty_name and "canny" in data.pretty_name and "photos" in data.pretty_name
    from controlnet.dataset.layout import Layout

    layout = Layout.of([("canny", None), ("fake_net", None)])
    assert data.dataset_info["features"] == datasets.Features.from_dict(layout.features())._to_yaml_list()
    assert data.dataset_info["splits"] == [{"name": "train", "num_bytes": data.dataset_info["download_size"], "num_examples": 2}]
    assert data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert data.to_dict() == type(data)(**data.to_dict()).to_dict()  # round-trips through DatasetCardData

    body = card.text
    assert "the image folder `photos`" in body
    assert "| `canny` | low_threshold=50, high_threshold=200 | none | no weights | cn-annotate " in body
    assert "`fake_net.pth` (" in body and "| test weights |" in body  # weights files and their declared licence
    assert "- Images: `cc-by-4.0`" in body and "- Maps of `fake_net`: computed with weights under test weights" in body

    _build(folder, output, names=("canny", "fake_net"), params={"canny": {"low_threshold": 50}, "fake_net": {"weights": weights}})
    assert DatasetCard.load(output / "README.md").data.license == "cc-by-4.0"  # a resumed run keeps the licence
    with pytest.raises(ValueError, match="license"):
        BuildConfig(input=str(folder), output=output, annotators=(("canny", annotators.get_class("canny").Config()),), license="CC BY 4.0")


def test_hub_input_is_read_at_one_commit_named_in_identity_and_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub
    from PIL import Image

    from tests.controlnet.helpers import photo

    local = datasets.Dataset.from_dict({"image": [Image.fromarray(photo(i, 64, 64)) for i in range(2)], "text": ["a", "b"]}).cast_column("image", datasets.Image())
    calls: list[dict[str, Any]] = []

    def load_dataset(spec: str, **kwargs: Any) -> datasets.Dataset:
        calls.append({"spec": spec, **kwargs})
        return local

    class FakeApi:
        def dataset_info(self, repo_id: str, revision: str | None = None) -> Any:
            return SimpleNamespace(sha="0123456789abcdef0123456789abcdef01234567" if revision is None else "fedcba9876543210fedcba9876543210fedcba98")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    _build("someone/photos", tmp_path / "ds")  # type: ignore[arg-type]
    identity = json.loads((tmp_path / "ds" / "build.json").read_text())["input"]
    assert identity["hub_id"] == "someone/photos" and identity["revision"] == "0123456789abcdef0123456789abcdef01234567"
    assert calls[-1]["revision"] == identity["revision"]  # the rows come from that commit
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "the Hub dataset [`someone/photos`](https://huggingface.co/datasets/someone/photos) at commit `0123456789abcdef0123456789abcdef01234567`" in card
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: Path("/data")))  # a home that prefixes the card's Hub URL
    assert local_path_files(tmp_path / "ds") == []
    _build("someone/photos", tmp_path / "pinned", revision="v1")  # type: ignore[arg-type]
    assert json.loads((tmp_path / "pinned" / "build.json").read_text())["input"]["revision"].startswith("fedcba")
