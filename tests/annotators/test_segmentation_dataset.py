"""A dataset built with ``seg_ufade20k``: the ``segmentation`` column holds the annotator's label maps
losslessly (the reference's labels on the parity input), and the card names the classes, their
palette colours and how often each was found."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import annotators
from annotators.image import load_image
from annotators.labels import ADE20K, ADE20K_PALETTE
from annotators.uniformer import CHECKPOINT
from controlnet.dataset.build import BuildConfig, build, shard_paths
from tests.parity import SeededWeights, assert_maps_agree, case

UNIFORMER = case("uniformer_ade20k")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, seeded_weights: SeededWeights) -> tuple[Path, Path, dict[str, object]]:
    """The parity input (512x512, the reference's own size) and a small photograph, built at their
    own sizes with the full-size seeded UniFormer."""
    folder = tmp_path_factory.mktemp("seg-images")
    shutil.copy(UNIFORMER.path / "input.png", folder / "astronaut.png")
    from skimage import data

    Image.fromarray(data.chelsea()[50:130, 150:210]).save(folder / "cat.png")
    params = {"weights": str(seeded_weights.ensure((CHECKPOINT,)))}
    spec = (("seg_ufade20k", annotators.get_class("seg_ufade20k").Config(**params)),)
    output = tmp_path_factory.mktemp("seg-ds") / "ds"
    build(BuildConfig(input=str(folder), output=output, annotators=spec, keep_size=True, workers=1))
    rows = {row["file_name"]: row for path in shard_paths(output) for row in pq.read_table(path).to_pylist()}
    return folder, output, {"rows": rows, "params": params}


def test_label_column_equals_the_annotators_labels(built: tuple[Path, Path, dict[str, object]]) -> None:
    folder, _, found = built
    rows = found["rows"]
    assert sorted(rows) == ["astronaut.png", "cat.png"]
    annotator = annotators.create("seg_ufade20k", **found["params"])
    for file_name, row in rows.items():
        stored = ADE20K.decode(row["segmentation"])
        expected = annotator.annotate([load_image(folder / file_name)])[0]
        assert stored.dtype == np.uint8 and stored.shape == (row["height"], row["width"])
        np.testing.assert_array_equal(stored, expected.data)
        condition = np.asarray(Image.open(io.BytesIO(row["conditioning_image"]["bytes"])).convert("RGB"))
        np.testing.assert_array_equal(condition, np.asarray(ADE20K_PALETTE, np.uint8)[stored])


def test_stored_labels_on_the_parity_input_are_the_reference_ones(built: tuple[Path, Path, dict[str, object]]) -> None:
    stored = ADE20K.decode(built[2]["rows"]["astronaut.png"]["segmentation"])
    agree = assert_maps_agree(stored, UNIFORMER.golden["label_map"], name="stored label_map")
    print(f"stored labels vs reference: {agree:.5%} identical")


def test_datasets_reads_the_column_as_a_single_channel_image(built: tuple[Path, Path, dict[str, object]], tmp_path: Path) -> None:
    import datasets

    dataset = datasets.load_dataset(str(built[1]), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert dataset.features["segmentation"] == datasets.Image()
    row = next(r for r in dataset if r["file_name"] == "astronaut.png")
    labels = np.asarray(row["segmentation"])
    np.testing.assert_array_equal(labels, ADE20K.decode(built[2]["rows"]["astronaut.png"]["segmentation"]))


def test_card_lists_classes_palette_and_frequencies(built: tuple[Path, Path, dict[str, object]]) -> None:
    card = (built[1] / "README.md").read_text()
    rows = built[2]["rows"]
    maps = [ADE20K.decode(row["segmentation"]) for row in rows.values()]
    present = sorted(set(np.concatenate([np.unique(m) for m in maps]).tolist()))
    assert f"Label set: ADE20K, 150 classes, {len(present)} of them found" in card
    assert "| `segmentation` | label map (PNG, one ADE20K class index per pixel" in card
    total = sum(m.size for m in maps)
    for label in (0, 7, 149, *present[:5]):
        name = ADE20K.classes[label]
        images = sum(int((m == label).any()) for m in maps)
        share = 100 * sum(int((m == label).sum()) for m in maps) / total
        red, green, blue = ADE20K_PALETTE[label]
        assert f"  | {label} | {name} | {red},{green},{blue} | {images} | {share:.2f}% |" in card
