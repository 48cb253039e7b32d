"""Bae surface-normal annotator against ``shared/parity/normalbae``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import annotators
from annotators.nets.normalbae import NNET, remap_normalbae_checkpoint
from annotators.normalbae import CHECKPOINT, NormalBae
from tests.parity import SeededWeights, assert_f16_close, assert_maps_agree, assert_raw_close, case, seeded_arrays

NORMALBAE = case("normalbae")


@pytest.fixture(scope="module")
def annotator(seeded_weights: SeededWeights) -> NormalBae:
    return annotators.create("normal_bae", weights=str(seeded_weights.ensure((CHECKPOINT,)))).load()


@pytest.fixture(scope="module")
def parity_run(annotator: NormalBae) -> dict[str, np.ndarray]:
    """One pass on the case input, keeping the network's outputs at every resolution."""
    captured: dict[str, np.ndarray] = {}

    def keep(module: torch.nn.Module, args: tuple, outputs: list[torch.Tensor]) -> None:
        captured["res8"], captured["res1"] = outputs[0][0].numpy().copy(), outputs[-1][0].numpy().copy()

    handle = annotator.model.register_forward_hook(keep)
    try:
        (captured["final_map"],) = annotator([NORMALBAE.input_rgb])
    finally:
        handle.remove()
    return captured


def test_coarse_prediction_matches_reference(parity_run: dict[str, np.ndarray]) -> None:
    golden = NORMALBAE.golden["raw_out_res8_xyz_kappa"]
    print(f"res8: max |diff| {np.abs(parity_run['res8'] - golden).max():.3g} (range {np.abs(golden).max():.3g})")
    assert_raw_close(parity_run["res8"], golden, "raw_out_res8_xyz_kappa")


def test_full_resolution_prediction_matches_reference(parity_run: dict[str, np.ndarray]) -> None:
    golden = NORMALBAE.golden["raw_out_res1_xyz_kappa_f16"]
    print(f"res1: max |diff| {np.abs(parity_run['res1'] - golden.astype(np.float32)).max():.3g}")
    assert_f16_close(parity_run["res1"], golden, "raw_out_res1_xyz_kappa_f16")
    np.testing.assert_allclose(np.linalg.norm(parity_run["res1"][:3], axis=0), 1.0, atol=1e-5)


def test_final_map_matches_reference(parity_run: dict[str, np.ndarray]) -> None:
    golden = NORMALBAE.golden["final_map"]
    fraction = assert_maps_agree(parity_run["final_map"], golden, name="final_map")
    print(f"final_map: {fraction:.5%} identical, max diff {np.abs(parity_run['final_map'].astype(int) - golden).max()}")


def test_remap_covers_the_module_and_drops_only_the_unused_head_norm() -> None:
    keys = [key for key, _, _ in NORMALBAE.manifest["keys"]]
    remapped = remap_normalbae_checkpoint({"model": {"module." + k: torch.zeros(1) for k in keys}})
    with torch.device("meta"):
        expected = set(NNET().state_dict())
    assert set(remapped) == expected
    unused = [k for k in keys if k.startswith("encoder.original_model.bn2.")]
    assert len(unused) == 5 and len(remapped) == len(keys) - len(unused)


def test_missing_key_is_reported(tmp_path: Path) -> None:
    state = {k: torch.from_numpy(v) for k, v in seeded_arrays(NORMALBAE.manifest).items()}
    del state["decoder.up2._net.4.running_var"]
    path = tmp_path / CHECKPOINT
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match="missing key.*decoder.up2.layers.4.running_var"):
        annotators.create("normal_bae", weights=str(path)).load()


@pytest.mark.parametrize("shape", [(80, 120), (64, 96), (33, 47), (8, 8)])
def test_any_size_gives_unit_normals_of_input_size(annotator: NormalBae, shape: tuple[int, int]) -> None:
    image = NORMALBAE.input_rgb[100 : 100 + shape[0], 200 : 200 + shape[1]].copy()
    (colours,) = annotator([image])
    assert colours.shape == (*shape, 3) and colours.dtype == np.uint8
    with torch.inference_mode():
        prediction = annotator.predict(annotator.model, [image])
    assert prediction.shape == (1, 4, *shape)
    torch.testing.assert_close(prediction[:, :3].norm(dim=1), torch.ones(1, *shape), atol=1e-5, rtol=0)


def test_mixed_sizes_in_one_batch_match_single_calls(annotator: NormalBae) -> None:
    images = [NORMALBAE.input_rgb[:64, :96].copy(), NORMALBAE.input_rgb[100:196, 50:114].copy(), NORMALBAE.input_rgb[:64, 200:296].copy()]
    for image, result in zip(images, annotator(images)):
        # oneDNN convolutions round differently for different batch sizes, so not bit-identical.
        assert_maps_agree(result, annotator([image])[0], name=f"{image.shape}")
