"""ZoeDepth (``depth_zoe``): the v1.1 pipeline against the upstream run in ``tests/data/zoe_v11``
(full-size seeded weights through the user path), the remap of ``ZoeD_M12_N.pt``, the transformers
conversions on seeded tiny configurations, and the post-processing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import annotators
from annotators.nets.zoedepth import remap_zoedepth_checkpoint, zoedepth_config
from annotators.weights import WeightsNotFoundError
from annotators.zoe import CHECKPOINT, DepthZoe, depth_to_uint8
from tests.parity import SeededWeights, assert_raw_close
from tests.seeded_depth import ZOE_FIXTURE, zoe_v11_manifest

GOLDEN = dict(np.load(ZOE_FIXTURE / "golden.npz"))


@pytest.fixture(scope="module")
def parity_run(seeded_weights: SeededWeights) -> dict[str, np.ndarray]:
    """One call of the annotator on the fixture's input, through the user path (``ZoeD_M12_N.pt``
    with the seeded weights in v1.1's layout), recording the relative depth of the first (unflipped)
    pass and the metric depth the map is made from."""
    import annotators.zoe as zoe

    annotator = annotators.create("depth_zoe", weights=str(seeded_weights.ensure((CHECKPOINT,)))).load()
    captured: dict[str, np.ndarray] = {}

    def keep_relative(module: torch.nn.Module, args: tuple, output: tuple) -> None:
        captured.setdefault("rel_depth", output[0][0].numpy().copy())

    def keep_depth(depth: np.ndarray) -> np.ndarray:
        captured["infer_depth"] = depth.copy()
        return depth_to_uint8(depth)

    handle = annotator.model.relative_head.register_forward_hook(keep_relative)
    zoe.depth_to_uint8 = keep_depth  # type: ignore[assignment]
    try:
        captured["final_map"] = annotator.annotate([GOLDEN["input"]], single_channel=True)[0].map
    finally:
        handle.remove()
        zoe.depth_to_uint8 = depth_to_uint8  # type: ignore[assignment]
    return captured


def test_relative_depth_matches_reference(parity_run: dict[str, np.ndarray]) -> None:
    actual = parity_run["rel_depth"]
    assert actual.shape == tuple(GOLDEN["rel_depth_shape"]) == (352, 512)
    golden = GOLDEN["rel_depth_every4"]
    print(f"rel_depth: max |diff| {np.abs(actual[::4, ::4] - golden).max():.3g} (range {np.abs(golden).max():.3g})")
    assert_raw_close(actual[::4, ::4], golden, "rel_depth")


def test_metric_depth_matches_reference(parity_run: dict[str, np.ndarray]) -> None:
    actual, golden = parity_run["infer_depth"], GOLDEN["infer_depth"]
    diff = np.abs(actual - golden)
    scale = np.abs(golden).max()
    print(f"infer_depth: max |diff| {diff.max():.3g}, 99th percentile {np.percentile(diff, 99):.3g} (range {scale:.3g})")
    assert actual.shape == golden.shape
    # Near-tied bins may move a few pixels (see tests/data/zoe_v11/README.md); the rest is noise.
    assert (diff <= 1e-3 * scale).mean() >= 0.99
    percentiles = np.percentile(actual, [2, 85])
    np.testing.assert_allclose(percentiles, GOLDEN["percentiles"], rtol=0, atol=1e-3 * scale)


def test_final_map_matches_reference(parity_run: dict[str, np.ndarray]) -> None:
    actual, golden = parity_run["final_map"], GOLDEN["final_map"]
    assert actual.shape == golden.shape and actual.dtype == np.uint8
    diff = np.abs(actual.astype(int) - golden)
    print(f"final_map: {(diff == 0).mean():.4%} identical, {(diff <= 1).mean():.4%} within 1, max diff {diff.max()}")
    assert (diff <= 1).mean() >= 0.995
    np.testing.assert_array_equal(depth_to_uint8(GOLDEN["infer_depth"]), golden)  # the post-processing exactly


def test_remap_covers_the_transformers_model_exactly() -> None:
    from transformers import ZoeDepthForDepthEstimation

    manifest = zoe_v11_manifest()
    checkpoint = {"model": {k: torch.empty(s, device="meta") for k, s, _ in manifest["keys"]}}
    remapped = remap_zoedepth_checkpoint(checkpoint)
    with torch.device("meta"):
        expected = ZoeDepthForDepthEstimation(zoedepth_config()).state_dict()
    assert {k: tuple(v.shape) for k, v in remapped.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    dropped = set(manifest["constants"]) | {k for k, _, _ in manifest["keys"] if ".fc_norm." in k or ".model.head." in k}
    assert len(remapped) == len(manifest["keys"]) - len(dropped) + 24 * 2  # each block's fused qkv weight becomes 3


def test_qkv_and_biases_land_in_query_key_value() -> None:
    prefix = "core.core.pretrained.model.blocks.7.attn."
    weight = torch.arange(12.0).reshape(6, 2)
    out = remap_zoedepth_checkpoint({prefix + "qkv.weight": weight, prefix + "q_bias": torch.ones(2), prefix + "v_bias": torch.zeros(2)})
    layer = "backbone.beit.layers.7.attention."
    assert torch.equal(out[layer + "k_proj.weight"], weight[2:4]) and torch.equal(out[layer + "q_proj.bias"], torch.ones(2))
    assert set(out) == {layer + n for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias", "v_proj.bias")}


def test_broken_checkpoint_fails_the_strict_load(tmp_path: Path) -> None:
    torch.save({"model": {"conv2.weight": torch.zeros(256, 256, 1, 1)}}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match=f"{CHECKPOINT}: does not match ZoeDepthForDepthEstimation: .*missing key"):
        annotators.create("depth_zoe", weights=str(tmp_path)).load()


@pytest.mark.parametrize("model_id", ["Intel/zoedepth-nyu", "Intel/zoedepth-nyu-kitti"])
def test_transformers_conversions_load_with_timms_layer_norm(seeded_weights: SeededWeights, photos: list[np.ndarray], model_id: str) -> None:
    annotator = seeded_weights.create("depth_zoe", transformers_model=model_id)
    assert annotator.weights.model_id == model_id
    images = [photos[1][:90, :130].copy(), photos[2][:64, :64].copy()]
    maps = annotator(images)
    assert annotator.model.config.backbone_config.layer_norm_eps == 1e-6
    assert len(annotator.model.config.bin_configurations) == (2 if "kitti" in model_id else 1)
    for image, depth in zip(images, maps, strict=True):
        assert depth.shape == image.shape and depth.std() > 0


def test_a_folder_of_another_model_is_refused(seeded_weights: SeededWeights) -> None:
    folder = seeded_weights.location(annotators.create("depth_anything_v2", encoder="vits", weights_format="transformers").weights)
    with pytest.raises(ValueError, match="not a ZoeDepth model"):
        annotators.create("depth_zoe", weights_format="transformers", weights=str(folder)).load()


def test_map_is_the_inverse_of_the_percentile_scaled_depth() -> None:
    depth = np.linspace(1.0, 11.0, 101, dtype=np.float32).reshape(1, 101)
    low, high = np.percentile(depth, 2), np.percentile(depth, 85)  # 1.2 and 9.5
    expected = ((1 - (depth - np.float32(low)) / np.float32(high - low)) * 255).clip(0, 255).astype(np.uint8)
    actual = depth_to_uint8(depth)
    np.testing.assert_array_equal(actual, expected)
    assert actual[0, 0] == 255 and actual[0, 2] == 255 and actual[0, 85] == 0 and actual[0, -1] == 0  # near bright, far black
    assert (depth_to_uint8(np.full((4, 4), 2.5, np.float32)) == 0).all()  # 0/0 in the reference


def test_tiny_images_are_padded_within_their_sides(seeded_weights: SeededWeights) -> None:
    annotator = seeded_weights.create("depth_zoe")
    for shape in [(1, 1), (3, 5), (4, 4), (9, 2)]:  # the reference's reflection fails below 5 px
        (depth,) = annotator([np.full((*shape, 3), 90, np.uint8)])
        assert depth.shape == (*shape, 3)


@pytest.mark.parametrize(
    ("params", "expected"),
    [({}, "`hf download lllyasviel/Annotators ZoeD_M12_N.pt`"), ({"weights_format": "transformers"}, "`hf download Intel/zoedepth-nyu`")],
)
def test_missing_weights_is_one_line(no_weights: Path, params: dict, expected: str) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        annotators.create("depth_zoe", **params)([np.zeros((16, 16, 3), np.uint8)])
    assert "\n" not in str(err.value) and expected in str(err.value)


def test_declared_weights_and_defaults() -> None:
    config = DepthZoe.Config()
    assert config.weights_format == "original" and config.transformers_model == "Intel/zoedepth-nyu"
    assert DepthZoe.weights.files[0].name == "ZoeD_M12_N.pt" and DepthZoe.weights.repo_id == "lllyasviel/Annotators"
    assert DepthZoe.grayscale and "MIT" in DepthZoe.weights.license
    kitti = annotators.create("depth_zoe", weights_format="transformers", transformers_model="Intel/zoedepth-nyu-kitti")
    assert kitti.weights.format == "transformers" and "MIT" in kitti.weights.license
