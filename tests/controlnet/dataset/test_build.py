"""The dataset builder end to end: output layout, bad inputs, captions, resume, identity, workers."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

import annotators
from annotators.base import Annotation, AnnotatorConfig, PerImageAnnotator, param
from annotators.image import hwc3, resize_image
from annotators.data import POSE, PoseFilters, count_body_keypoints
from annotators.neural import NeuralAnnotator
from annotators.weights import WeightFile, Weights
from controlnet.dataset.build import BuildConfig, BuildError, BuildProgress, build, shard_paths
from controlnet.dataset.shards import ShardWriter
from controlnet.dataset.card import contact_sheet
from controlnet.dataset.sources import DEFAULT_PROMPT
from tests.controlnet.helpers import encode, write_bad_files, write_photo


def config(source: Path | str, output: Path, names: tuple[str, ...] = ("canny",), params: dict[str, dict[str, Any]] | None = None, **options: Any) -> BuildConfig:
    params = params or {}
    specs = tuple((name, annotators.get_class(name).Config(**params.get(name, {}))) for name in names)
    options.setdefault("workers", 1)
    return BuildConfig(input=str(source), output=output, annotators=specs, **options)


def load(output: Path, tmp_path: Path) -> Any:
    import datasets

    return datasets.load_dataset(str(output), split="train", cache_dir=str(tmp_path / "hf-cache"))


def rows(output: Path) -> list[dict[str, Any]]:
    return [row for path in shard_paths(output) for row in pq.read_table(path).to_pylist()]


def reference_pixels(path: Path) -> np.ndarray:
    """Decoded with Pillow alone (EXIF orientation applied), independently of the builder."""
    return hwc3(np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture()
def mixed(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Good photos of several sizes and formats, broken files, and files that are not inputs."""
    folder = tmp_path / "images"
    write_photo(folder / "small.jpg", 0, 96, 80)
    write_photo(folder / "sub" / "wide.jpg", 1, 150, 90)
    write_photo(folder / "sub" / "exact.png", 2, 576, 512, fmt="PNG")  # resize_image keeps 576x512
    write_photo(folder / "exact.jpg", 3, 512, 512)
    (folder / "small.txt").write_text("a cropped astronaut\n")
    (folder / "notes.md").write_text("not an image, not an input")
    bad = write_bad_files(folder / "bad")
    (folder / "bad" / "huge.png").write_bytes(encode(np.zeros((1000, 1000, 3), np.uint8), "PNG"))
    return folder, {f"bad/{name}": kind for name, kind in bad.items()}


def test_folder_with_good_and_bad_files_end_to_end(mixed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    folder, bad = mixed
    output = tmp_path / "ds"
    result = build(config(folder, output, max_pixels=600_000))

    assert (result.rows, result.skipped) == (4, len(bad))
    skipped = [json.loads(line) for line in (output / "skipped.jsonl").read_text().splitlines()]
    from controlnet.dataset.pipeline import skip_kind

    assert {record["file_name"]: skip_kind(record["reason"]) for record in skipped} == bad
    assert all(set(record) == {"file_name", "reason"} for record in skipped)  # relative names only: no local path

    dataset = load(output, tmp_path)
    assert dataset.column_names[:5] == ["image", "conditioning_image", "text", "file_name", "annotator"]
    assert sorted(dataset["file_name"]) == ["exact.jpg", "small.jpg", "sub/exact.png", "sub/wide.jpg"]
    for row in dataset:
        source = folder / row["file_name"]
        expected_image = resize_image(reference_pixels(source), 512)
        assert row["image"].size == row["conditioning_image"].size == (expected_image.shape[1], expected_image.shape[0])
        assert row["conditioning_image"].mode == "L"  # canny is stored single-channel
        assert row["annotator"] == "canny"
        stored_pixels = np.asarray(row["image"].convert("RGB"))
        assert np.abs(stored_pixels.astype(int) - expected_image).mean() < 2  # the reference resize, within JPEG q95
        # the map is canny of exactly the pixels a reader decodes from the stored image
        np.testing.assert_array_equal(np.asarray(row["conditioning_image"]), cv2.Canny(stored_pixels, 100, 200))
        assert row["text"] == ("a cropped astronaut" if row["file_name"] == "small.jpg" else DEFAULT_PROMPT)

    stored = {row["file_name"]: row for row in rows(output)}
    for name in ("exact.jpg", "sub/exact.png"):  # no resize needed: the file itself, not re-encoded
        assert stored[name]["image"]["bytes"] == (folder / name).read_bytes()
    resized = stored["sub/wide.jpg"]["image"]["bytes"]
    assert resized[:2] == b"\xff\xd8" and pixels(resized).shape[:2] == (512, 832)

    card = (output / "README.md").read_text()
    assert "path: data/train-*" in card and "low_threshold=100" in card and "datasets " in card
    assert "Rows: 4" in card and f"Skipped inputs: {len(bad)}" in card and "small.jpg" in card


@pytest.mark.timeout(60)
def test_workers_start_after_this_process_ran_opencv_on_several_threads(tmp_path: Path) -> None:
    """A forked worker that resized the OpenCV thread pool it inherited running (this process had
    just used it, as a first build with one worker does) used to wait forever."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        large = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
        cv2.Canny(cv2.resize(large, (1000, 1000), interpolation=cv2.INTER_AREA), 100, 200)  # the pool's threads now wait for work
        write_photo(tmp_path / "images" / "a.png", 0, 64, 64, fmt="PNG")
        write_photo(tmp_path / "images" / "b.png", 1, 64, 64, fmt="PNG")
        assert build(config(tmp_path / "images", tmp_path / "ds", resolution=64, workers=2, batch_size=1)).rows == 2
    finally:
        cv2.setNumThreads(threads)


def test_keep_size_and_workers_give_the_same_dataset(mixed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    folder, _ = mixed
    one = build(config(folder, tmp_path / "one", keep_size=True, max_pixels=600_000))
    two = build(config(folder, tmp_path / "two", keep_size=True, max_pixels=600_000, workers=2, batch_size=1))
    assert (one.rows, one.skipped) == (two.rows, two.skipped) == (4, 7)
    first, second = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["file_name"] for r in first] == [r["file_name"] for r in second]
    assert [r["conditioning_image"] for r in first] == [r["conditioning_image"] for r in second]
    for row in first:  # original sizes, original bytes
        assert row["image"]["bytes"] == (folder / row["file_name"]).read_bytes()
        assert pixels(row["conditioning_image"]["bytes"]).shape[:2] == reference_pixels(folder / row["file_name"]).shape[:2]


def test_several_annotators_in_one_pass(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i in range(3):
        write_photo(folder / f"{i}.jpg", i, 100, 70)
    build(config(folder, tmp_path / "ds", names=("canny", "scribble_xdog"), resolution=128, params={"canny": {"low_threshold": 50}}))
    stored = rows(tmp_path / "ds")
    assert list(stored[0]) == ["image", "conditioning_image", "canny", "scribble_xdog", "text", "file_name", "annotator", "width", "height"]
    xdog = annotators.create("scribble_xdog")
    for row in stored:
        assert row["annotator"] == "canny,scribble_xdog"
        assert row["conditioning_image"]["bytes"] == row["canny"]["bytes"]
        image = hwc3(pixels(row["image"]["bytes"]))  # the resized photo as stored (and annotated)
        assert image.shape == resize_image(reference_pixels(folder / row["file_name"]), 128).shape
        np.testing.assert_array_equal(pixels(row["canny"]["bytes"]), cv2.Canny(image, 50, 200))
        np.testing.assert_array_equal(pixels(row["scribble_xdog"]["bytes"]), xdog([image])[0][:, :, 0])
    dataset = load(tmp_path / "ds", tmp_path)
    assert dataset[0]["scribble_xdog"].size == dataset[0]["image"].size


def test_interrupted_build_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i in range(7):
        write_photo(folder / f"{i}.jpg", i, 80, 64)
    bad = write_bad_files(folder / "bad")
    output = tmp_path / "ds"
    calls = 0

    def crash(state: BuildProgress) -> None:
        nonlocal calls
        calls += 1
        if calls == 8:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        build(config(folder, output, resolution=64, batch_size=1, shard_size=2, max_pixels=100_000), crash)
    before = rows(output)
    skipped_before = (output / "skipped.jsonl").read_text().splitlines()
    assert 0 < len(before) + len(skipped_before) < 14
    first_shard = shard_paths(output)[0].read_bytes()

    seen: list[BuildProgress] = []
    result = build(config(folder, output, resolution=64, batch_size=2, shard_size=2, workers=2, max_pixels=100_000), seen.append)
    assert seen[0].done_before == len(before) + len(skipped_before)
    after = rows(output)
    names = [row["file_name"] for row in after]
    assert sorted(names) == [f"{i}.jpg" for i in range(7)] and len(set(names)) == 7
    skipped = [json.loads(line)["file_name"] for line in (output / "skipped.jsonl").read_text().splitlines()]
    assert sorted(skipped) == sorted(f"bad/{name}" for name in bad)
    assert (result.rows, result.skipped) == (7, 7)
    assert shard_paths(output)[0].read_bytes() == first_shard  # finished shards are kept as they were
    assert not list((output / "data").glob(".*"))


def test_changed_parameters_are_refused_unless_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_photo(folder / "a.jpg", 0, 64, 64)
    output = tmp_path / "ds"
    build(config(folder, output, resolution=64))
    build(config(folder, output, resolution=64, workers=2, shard_size=5, batch_size=3))  # runtime options may change
    with pytest.raises(BuildError, match=r"annotators\.canny\.low_threshold: 100 -> 50.*--overwrite"):
        build(config(folder, output, resolution=64, params={"canny": {"low_threshold": 50}}))
    with pytest.raises(BuildError, match=r"annotators\.scribble_xdog"):
        build(config(folder, output, names=("scribble_xdog",), resolution=64))
    with pytest.raises(BuildError, match=r"resolution: 64 -> 128"):
        build(config(folder, output, resolution=128))
    result = build(config(folder, output, resolution=64, params={"canny": {"low_threshold": 50}}, overwrite=True))
    assert (result.rows, result.rows_added) == (1, 1)
    assert json.loads((output / "build.json").read_text())["annotators"]["canny"]["low_threshold"] == 50

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not empty"):
        build(config(folder, foreign, resolution=64, overwrite=True))
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_output_inside_input_is_not_ingested_and_new_images_are_added(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_photo(folder / "a.jpg", 0, 64, 64)
    output = folder / "ds"
    build(config(folder, output, resolution=64))
    write_photo(folder / "b.jpg", 1, 64, 64)
    result = build(config(folder, output, resolution=64))
    assert (result.rows, result.rows_added, result.skipped) == (2, 1, 0)
    assert sorted(row["file_name"] for row in rows(output)) == ["a.jpg", "b.jpg"]


def test_shards_are_numbered_and_complete(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i in range(5):
        write_photo(folder / f"{i}.png", i, 64, 64, fmt="PNG")
    output = tmp_path / "ds"
    build(config(folder, output, resolution=64, shard_size=2))
    assert [path.name for path in shard_paths(output)] == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]
    assert [pq.read_metadata(path).num_rows for path in shard_paths(output)] == [2, 2, 1]
    assert sorted(p.name for p in output.iterdir()) == [".cn-annotate.lock", "README.md", "build.json", "data", "skipped.jsonl"]
    assert len(load(output, tmp_path)) == 5


def test_row_groups_are_bounded_in_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "images"
    for i in range(6):
        write_photo(folder / f"{i}.png", i, 64, 64, fmt="PNG")
    smallest = min(len(path.read_bytes()) for path in folder.iterdir())  # stored as they are: no resize at 64
    monkeypatch.setattr(ShardWriter, "ROW_GROUP_BYTES", 2 * smallest)
    output = tmp_path / "ds"
    build(config(folder, output, resolution=64, workers=1))
    (shard,) = shard_paths(output)
    metadata = pq.read_metadata(shard)
    groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert sum(groups) == 6 and max(groups) == 2  # any two rows reach the limit
    assert len(load(output, tmp_path)) == 6


def test_existing_dataset_as_input_keeps_its_captions(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i in range(2):
        write_photo(folder / f"{i}.jpg", i, 64, 64)
    (folder / "metadata.jsonl").write_text('{"file_name": "1.jpg", "text": "second"}\n')
    build(config(folder, tmp_path / "first", resolution=64))
    build(config(tmp_path / "first", tmp_path / "second", names=("scribble_xdog",), resolution=64))
    stored = rows(tmp_path / "second")
    assert [row["text"] for row in stored] == [DEFAULT_PROMPT, "second"]
    assert [row["image"]["bytes"] for row in stored] == [row["image"]["bytes"] for row in rows(tmp_path / "first")]


def test_one_annotating_process_gives_the_same_rows(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i in range(4):
        write_photo(folder / f"{i}.jpg", i, 90, 70)
    build(config(folder, tmp_path / "plain", resolution=64))
    build(config(folder, tmp_path / "central", resolution=64, workers=2, central=True, batch_size=3))
    plain, central = rows(tmp_path / "plain"), rows(tmp_path / "central")
    assert [(r["file_name"], r["image"], r["conditioning_image"]) for r in plain] == [(r["file_name"], r["image"], r["conditioning_image"]) for r in central]


def test_contact_sheet(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i in range(3):
        write_photo(folder / f"{i}.jpg", i, 80, 64)
    build(config(folder, tmp_path / "ds", names=("canny", "scribble_xdog"), resolution=64))
    drawn = contact_sheet(tmp_path / "ds", tmp_path / "sheet.png", rows=2, height=40)
    sheet = Image.open(tmp_path / "sheet.png")
    assert drawn == 2 and sheet.height > 2 * 40 and sheet.width > 3 * 40


# --------------------------------------------------------------------------- annotators that find data


@dataclass(frozen=True)
class FakePoseConfig(AnnotatorConfig):
    scale: int = param(10, "red value per keypoint", ge=1)


class FakePose(PerImageAnnotator):
    """Finds ``red // scale`` keypoints (at most 18) in the top-left pixel's red value."""

    name = "fake_pose"
    description = "test annotator that returns OpenPose-style data"
    Config = FakePoseConfig
    data_kind = POSE

    def _annotate(self, images: list[np.ndarray]) -> list[Annotation]:
        results = []
        for image in images:
            found = min(18, int(image[0, 0, 0]) // self.config.scale)
            keypoints = [v for k in range(18) for v in (float(k), float(k), 0.9 if k < found else 0.0)]
            people = [{"pose_keypoints_2d": keypoints}] if found else []
            data = {"people": people, "canvas_width": image.shape[1], "canvas_height": image.shape[0]}
            results.append(Annotation(np.zeros_like(image), data))
        return results


def test_count_body_keypoints() -> None:
    person = {"pose_keypoints_2d": [1, 1, 0.5, 2, 2, 0.0, 3, 3, 1.0]}
    assert count_body_keypoints({"people": [person, person]}) == 4
    assert count_body_keypoints({"people": []}) == count_body_keypoints(None) == 0


def test_keypoints_column_and_min_keypoints(tmp_path: Path, registered, monkeypatch: pytest.MonkeyPatch) -> None:
    registered("fake_pose", FakePose)
    folder = tmp_path / "images"
    folder.mkdir()
    for red in (0, 50, 120, 250):
        Image.new("RGB", (64, 64), (red, 0, 0)).save(folder / f"red{red:03d}.png")

    build(config(folder, tmp_path / "all", names=("fake_pose",), keep_size=True))
    stored = {row["file_name"]: row for row in rows(tmp_path / "all")}
    assert len(stored) == 4
    assert json.loads(stored["red000.png"]["keypoints"])["people"] == []
    assert count_body_keypoints(json.loads(stored["red120.png"]["keypoints"])) == 12
    assert "Images with no person found: 1" in (tmp_path / "all" / "README.md").read_text()

    result = build(config(folder, tmp_path / "some", names=("fake_pose",), keep_size=True, filters=(PoseFilters(min_keypoints=10),)))
    assert sorted(row["file_name"] for row in rows(tmp_path / "some")) == ["red120.png", "red250.png"]
    skipped = [json.loads(line) for line in (tmp_path / "some" / "skipped.jsonl").read_text().splitlines()]
    assert [(record["file_name"], record["reason"].split(" body")[0]) for record in skipped] == [("red000.png", "0"), ("red050.png", "5")]
    assert result.skip_kinds == {"too few keypoints": 2}


def test_schema_is_the_one_datasets_writes() -> None:
    import datasets

    from controlnet.dataset.layout import Layout

    image, text = datasets.Image(), datasets.Value("string")
    size = datasets.Value("int32")
    expected = datasets.Features(
        {"image": image, "conditioning_image": image, "canny": image, "fake_pose": image, "text": text, "file_name": text, "annotator": text, "width": size, "height": size, "keypoints": text}
    ).arrow_schema
    assert Layout.of([("canny", None), ("fake_pose", POSE)]).arrow_schema().equals(expected, check_metadata=True)


def test_a_strip_too_large_once_resized_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (4000, 8), (10, 20, 30)).save(folder / "strip.png")  # 256000 x 512 once resized
    write_photo(folder / "fine.jpg", 0, 64, 64)
    result = build(config(folder, tmp_path / "ds", max_pixels=1_000_000))
    assert (result.rows, result.skip_kinds) == (1, {"too large": 1})


# --------------------------------------------------------------------------- batched (neural) annotators


class FakeNet(NeuralAnnotator):
    """A 1x1 convolution loaded from a checkpoint: a stand-in for a network, batched like one."""

    name = "fake_net"
    description = "test network: a weighted sum of the channels"
    weights = Weights(license="test weights", files=(WeightFile("fake_net.pth"),))
    grayscale = True
    batches: list[int] = []  # batch sizes seen in this process

    @property
    def forward_batch_size(self) -> int:
        return self.config.batch_size  # whole batches, as on a GPU (CPU runs go image by image)

    def _build(self, paths: list[Path]) -> Any:
        import torch

        return self.weights.load_into(torch.nn.Conv2d(3, 1, 1, bias=False), paths[0])

    def _forward(self, model: Any, batch: list[np.ndarray]) -> list[np.ndarray]:
        type(self).batches.append(len(batch))
        import torch

        out = model(self.to_tensor(batch)).clamp(0, 255).round().to(torch.uint8)
        return [hwc3(plane[0].cpu().numpy()) for plane in out]


def _fake_weights(folder: Path) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.tensor([0.25, 0.5, 0.25]).reshape(1, 3, 1, 1)}, folder / "fake_net.pth")
    return folder


def test_batched_annotator_in_workers_and_in_one_annotating_process(tmp_path: Path, registered, monkeypatch: pytest.MonkeyPatch) -> None:
    registered("fake_net", FakeNet)
    folder = tmp_path / "images"
    for i in range(6):
        write_photo(folder / f"{i}.png", i, 64, 64, fmt="PNG")
    weights = str(_fake_weights(tmp_path / "weights"))
    params = {"fake_net": {"weights": weights, "batch_size": 4}}

    FakeNet.batches.clear()
    build(config(folder, tmp_path / "one", names=("fake_net",), params=params, keep_size=True))
    assert FakeNet.batches == [4, 2]  # one forward pass per batch of --batch-size images
    for row in rows(tmp_path / "one"):
        image = reference_pixels(folder / row["file_name"]).astype(np.float32)
        expected = np.clip(np.round(image[:, :, 0] * 0.25 + image[:, :, 1] * 0.5 + image[:, :, 2] * 0.25), 0, 255)
        assert np.abs(pixels(row["conditioning_image"]["bytes"]).astype(int) - expected).max() <= 1

    FakeNet.batches.clear()
    build(config(folder, tmp_path / "central", names=("fake_net",), params={"fake_net": {"weights": weights, "batch_size": 3}}, keep_size=True, workers=2, central=True))
    assert FakeNet.batches == [3, 3]  # annotated here, while the workers decoded
    assert [r["conditioning_image"] for r in rows(tmp_path / "central")] == [r["conditioning_image"] for r in rows(tmp_path / "one")]

    # batch size and weights location are runtime options: resuming with others is allowed
    build(config(folder, tmp_path / "one", names=("fake_net",), params={"fake_net": {"weights": weights, "batch_size": 2}}, keep_size=True))


def test_missing_weights_stop_the_build(tmp_path: Path, registered, monkeypatch: pytest.MonkeyPatch) -> None:
    registered("fake_net", FakeNet)
    monkeypatch.delenv("CN_ANNOTATE_WEIGHTS", raising=False)
    write_photo(tmp_path / "images" / "a.jpg", 0, 64, 64)
    with pytest.raises(BuildError, match="fake_net.pth not found"):
        build(config(tmp_path / "images", tmp_path / "ds", names=("fake_net",), params={"fake_net": {"weights": str(tmp_path / "nowhere")}}))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_backend_that_cannot_load_stops_the_build_in_one_line(tmp_path: Path, registered, workers: int) -> None:
    """A corrupt checkpoint is the set-up's fault: one BuildError, not one skipped row per input."""
    registered("fake_net", FakeNet)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "fake_net.pth").write_bytes(b"not a checkpoint" * 10)
    for i in range(12):
        write_photo(tmp_path / "images" / f"{i}.jpg", i, 64, 64)
    params = {"fake_net": {"weights": str(tmp_path / "weights")}}
    with pytest.raises(BuildError, match=r"^fake_net: cannot load: .*fake_net\.pth: cannot load checkpoint") as err:
        build(config(tmp_path / "images", tmp_path / "ds", names=("fake_net",), params=params, keep_size=True, workers=workers, batch_size=4))
    assert "\n" not in str(err.value)
    assert (tmp_path / "ds" / "skipped.jsonl").read_text() == ""
    assert shard_paths(tmp_path / "ds") == []


def test_load_dataset_sees_resumed_and_rebuilt_folders_not_a_stale_cache(tmp_path: Path) -> None:
    """datasets caches a local folder with YAML configs by name; the card's numbers keep it honest."""
    import datasets

    cache = str(tmp_path / "one-shared-cache")

    def count(output: Path) -> int:
        return datasets.load_dataset(str(output), split="train", cache_dir=cache).num_rows

    images = tmp_path / "images"
    for i in range(3):
        write_photo(images / f"{i}.jpg", i)
    build(config(images, tmp_path / "a" / "ds"))
    assert count(tmp_path / "a" / "ds") == 3
    for i in range(3, 5):
        write_photo(images / f"{i}.jpg", i)
    build(config(images, tmp_path / "a" / "ds"))  # resumes: adds the two new inputs in a new shard
    assert count(tmp_path / "a" / "ds") == 5
    other = tmp_path / "other"
    for i in range(4):
        write_photo(other / f"{i}.jpg", i + 10)
    build(config(other, tmp_path / "b" / "ds"))  # a different dataset in a folder of the same name
    assert count(tmp_path / "b" / "ds") == 4
