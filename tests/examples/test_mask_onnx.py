"""The ONNX example annotator, on a tiny graph built here, and in a dataset build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples.annotators.mask_onnx import MaskOnnx


@pytest.fixture(scope="module")
def graph_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mask.onnx``: the mean of the three channels, i.e. the probability is the grey level."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1, "H", "W"])
    mean = helper.make_node("ReduceMean", ["image"], ["probability"], axes=[1], keepdims=1)
    model = helper.make_model(helper.make_graph([mean], "mask", [x], [y]), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder = tmp_path_factory.mktemp("onnx")
    onnx.save(model, folder / "mask.onnx")
    return folder


def test_mask_is_the_thresholded_grey_level(graph_folder: Path, astronaut: np.ndarray) -> None:
    image = astronaut[:96, :128].copy()
    annotator = MaskOnnx(weights=str(graph_folder), threshold=0.4)
    assert annotator._session is None  # nothing loads in the constructor
    (result,) = annotator([image])
    grey = image.astype(np.float64).mean(axis=2) / 255.0
    decided = np.abs(grey - 0.4) > 1e-5  # float32 rounding can only matter right at the threshold
    np.testing.assert_array_equal(result[:, :, 0][decided], np.where(grey > 0.4, 255, 0)[decided])
    annotator.close()
    assert annotator._session is None


def test_builds_a_dataset_once_registered(graph_folder: Path, tmp_path: Path, registered) -> None:
    import datasets
    from PIL import Image

    from controlnet.dataset.build import BuildConfig, build

    registered("example_mask_onnx", MaskOnnx)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64), (200, 200, 200)).save(images / "light.png")
    Image.new("RGB", (64, 64), (20, 20, 20)).save(images / "dark.png")
    config = MaskOnnx.Config(weights=str(graph_folder))
    build(BuildConfig(input=str(images), output=tmp_path / "ds", annotators=(("example_mask_onnx", config),), keep_size=True, workers=1))
    rows = {row["file_name"]: np.asarray(row["conditioning_image"]) for row in datasets.load_dataset(str(tmp_path / "ds"), split="train")}
    assert rows["light.png"].min() == 255 and rows["dark.png"].max() == 0
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "example_mask_onnx" in card
