"""HED v1.0 (``hed``, ``fake_scribble``) and v1.1 (``softedge_hed``, ``softedge_hedsafe``,
``scribble_hed``) against the parity cases ``hed_v10`` and ``hed_v11``, plus small, non-square and
mixed-size batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import annotators
from annotators.image import hwc3
from annotators.nets.hed import controlnet_hed_state_dict, hed_network_state_dict
from annotators.ops import scribble_from_soft_edges
from tests.parity import (
    assert_maps_agree,
    assert_raw_close,
    assert_sigmoid_close,
    case,
    write_published_checkpoint,
)

V10 = case("hed_v10")
V11 = case("hed_v11")
V10_SCORES = ["raw_score1_netScoreOne", "raw_score2_netScoreTwo", "raw_score3_netScoreThr", "raw_score4_netScoreFou", "raw_score5_netScoreFiv"]
HED_IDS = ["hed", "fake_scribble", "softedge_hed", "softedge_hedsafe", "scribble_hed"]


@pytest.fixture(scope="module")
def v10_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded hed_v10 weights under the published pytorch-hed names (``moduleVggOne.0.weight``)."""
    path = write_published_checkpoint(V10, tmp_path_factory.mktemp("hed_v10") / "network-bsds500.pth")
    assert all(key.startswith("module") for key in torch.load(path, weights_only=True))
    return path


@pytest.fixture(scope="module")
def v11_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_published_checkpoint(V11, tmp_path_factory.mktemp("hed_v11") / "ControlNetHED.pth")


@pytest.fixture(scope="module")
def hed(v10_checkpoint: Path) -> annotators.Annotator:
    return annotators.create("hed", weights=str(v10_checkpoint))


def reference_bgr_input(rgb: np.ndarray) -> torch.Tensor:
    """The v1.0 detector's network input: BGR, /255, NCHW float32."""
    return (torch.from_numpy(rgb[:, :, ::-1].copy()).float() / 255.0).permute(2, 0, 1)[None]


def test_hed_v10_side_scores_match_reference(hed: annotators.Annotator) -> None:
    with torch.inference_mode():
        scores = hed.model.side_scores(reference_bgr_input(V10.input_rgb))
    for name, score in zip(V10_SCORES, scores, strict=True):
        assert_raw_close(score[0, 0].numpy(), V10.golden[name], name)


def test_hed_v10_fused_edges_match_reference(hed: annotators.Annotator) -> None:
    with torch.inference_mode():
        edges = hed.model(reference_bgr_input(V10.input_rgb))
    assert_sigmoid_close(edges[0, 0].numpy(), V10.golden["raw_sigmoid_edges"], "raw_sigmoid_edges")


def test_hed_map_matches_reference(hed: annotators.Annotator) -> None:
    (edge_map,) = hed([V10.input_rgb])
    assert edge_map.shape == (512, 512, 3)
    np.testing.assert_array_equal(edge_map, hwc3(edge_map[:, :, 0]))
    assert_maps_agree(edge_map[:, :, 0], V10.golden["final_map"], name="final_map")


def test_scribble_post_processing_matches_reference_exactly() -> None:
    """The v1.1 scribble post-processing of the reference HED map gives the reference scribble."""
    expected = V11.golden["scribble_map"]
    np.testing.assert_array_equal(scribble_from_soft_edges(V11.golden["final_map"]), expected[:, :, 0])
    np.testing.assert_array_equal(expected, hwc3(expected[:, :, 0]))


def test_fake_scribble_matches_reference_post_processing(v10_checkpoint: Path) -> None:
    """v1.0 fake scribble = the same post-processing (checked above) of the v1.0 reference HED map."""
    (scribble,) = annotators.create("fake_scribble", weights=str(v10_checkpoint))([V10.input_rgb])
    expected = scribble_from_soft_edges(V10.golden["final_map"])
    assert set(np.unique(scribble)) <= {0, 255}
    assert 0.01 < (expected == 255).mean() < 0.99  # the comparison is not between two blank maps
    assert_maps_agree(scribble, hwc3(expected), name="fake_scribble")


def test_hed_v11_projections_match_reference(v11_checkpoint: Path) -> None:
    annotator = annotators.create("softedge_hed", weights=str(v11_checkpoint))
    rgb = torch.from_numpy(V11.input_rgb.copy()).float().permute(2, 0, 1)[None]
    with torch.inference_mode():
        projections = annotator.model(rgb)
    for index, projection in enumerate(projections, start=1):
        assert_raw_close(projection[0, 0].numpy(), V11.golden[f"raw_projection{index}"], f"raw_projection{index}")


@pytest.mark.parametrize(("name", "golden"), [("softedge_hed", "final_map"), ("softedge_hedsafe", "final_map_safe"), ("scribble_hed", "scribble_map")])
def test_hed_v11_maps_match_reference(v11_checkpoint: Path, name: str, golden: str) -> None:
    (edge_map,) = annotators.create(name, weights=str(v11_checkpoint))([V11.input_rgb])
    expected = V11.golden[golden]
    assert_maps_agree(edge_map, expected if expected.ndim == 3 else hwc3(expected), name=golden)


def test_pytorch_hed_and_renamed_layouts_load_alike() -> None:
    """The published ``module*`` names and ControlNet's renamed ``net*`` names map to the same keys."""
    tensor = torch.zeros(1)
    names = ["VggOne.0.weight", "VggFiv.5.bias", "ScoreThr.weight", "Combine.0.bias"]
    published = hed_network_state_dict({"module" + n: tensor for n in names})
    renamed = hed_network_state_dict({"net" + n: tensor for n in names})
    assert list(published) == list(renamed) == ["stages.0.0.weight", "stages.4.5.bias", "scores.2.weight", "combine.bias"]
    assert list(controlnet_hed_state_dict({"norm": tensor, "block5.convs.2.weight": tensor})) == ["norm", "blocks.4.convs.2.weight"]


def test_wrong_checkpoint_is_refused_with_the_file_name(v11_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match=r"ControlNetHED\.pth: does not match HEDNetwork: .*missing"):
        annotators.create("hed", weights=str(v11_checkpoint)).load()


def small_batch() -> list[np.ndarray]:
    """Two sizes, non-square, interleaved: 80x120, 64x96, 80x120."""
    from skimage import data

    photo = data.astronaut()
    return [photo[100:180, 150:270].copy(), photo[:64, 300:396].copy(), photo[300:380, 200:320].copy()]


def assert_batch_matches_one_by_one(annotator: annotators.Annotator, images: list[np.ndarray]) -> None:
    """Maps of a mixed-size batch have the inputs' sizes and equal channels, and are exactly the maps
    made one image at a time (on the CPU, where oneDNN would otherwise round some layers differently
    for another batch size)."""
    maps = annotator(images)
    for image, edge_map in zip(images, maps, strict=True):
        assert edge_map.shape == image.shape and edge_map.dtype == np.uint8
        np.testing.assert_array_equal(edge_map, hwc3(edge_map[:, :, 0]))
        np.testing.assert_array_equal(edge_map, annotator([image])[0])
    assert maps[0].std() > 0  # seeded weights still give a non-constant map


@pytest.mark.parametrize("name", HED_IDS)
def test_mixed_size_batch_matches_one_by_one(seeded_weights, name: str) -> None:
    folder = seeded_weights.location(annotators.get_class(name).weights)
    assert_batch_matches_one_by_one(annotators.create(name, weights=str(folder), batch_size=2), small_batch())


@pytest.mark.parametrize("name", ["hed", "softedge_hed"])
def test_too_small_image_is_refused(seeded_weights, name: str) -> None:
    folder = seeded_weights.location(annotators.get_class(name).weights)
    with pytest.raises(ValueError, match="at least 16x16 pixels, got 40x15"):
        annotators.create(name, weights=str(folder))([np.zeros((15, 40, 3), np.uint8)])


def test_scribble_parameters_are_validated() -> None:
    assert annotators.create("scribble_hed").config.nms_threshold == 127
    with pytest.raises(ValueError, match="stroke_threshold"):
        annotators.create("fake_scribble", stroke_threshold=255)
    with pytest.raises(ValueError, match="safe_steps"):
        annotators.create("softedge_hedsafe", safe_steps=0)


def test_hed_v11_fusion_on_an_accelerator_matches_the_opencv_path(v11_checkpoint: Path) -> None:
    """The torch resize-mean-sigmoid that runs on GPUs, run here on CPU tensors, against OpenCV's."""
    from annotators.hed import _fused_probabilities_on_device

    annotator = annotators.create("softedge_hed", weights=str(v11_checkpoint))
    image = np.ascontiguousarray(V11.input_rgb[:200, :300])  # side outputs of odd sizes: 200/16 is not whole
    with torch.inference_mode():
        expected = annotator._probabilities(annotator.model, [image])[0]
        fused = _fused_probabilities_on_device(annotator.model(annotator.to_tensor([image])), 200, 300)[0]
    assert fused.shape == expected.shape == (200, 300)
    assert 0.05 < expected.std()  # not a flat map
    np.testing.assert_allclose(fused, expected, atol=1e-4)  # 0.03 grey levels: OpenCV rounds its bilinear weights
