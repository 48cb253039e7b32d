"""MiDaS DPT-Hybrid depth and normal annotators against ``shared/parity/midas_dpt_hybrid``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import annotators
from annotators.midas import CHECKPOINT, MidasDepth, MidasNormal, depth_to_map, normal_image
from annotators.nets.dpt_hybrid import remap_midas_checkpoint
from tests.parity import SeededWeights, assert_maps_agree, assert_raw_close, case, seeded_arrays

MIDAS = case("midas_dpt_hybrid")


@pytest.fixture(scope="module")
def weights_dir(seeded_weights: SeededWeights) -> Path:
    return seeded_weights.ensure((CHECKPOINT,))


@pytest.fixture(scope="module")
def depth_annotator(weights_dir: Path) -> MidasDepth:
    return annotators.create("depth_midas", weights=str(weights_dir)).load()


@pytest.fixture(scope="module")
def parity_run(depth_annotator: MidasDepth, weights_dir: Path) -> dict[str, np.ndarray]:
    """One pass of each annotator on the case input, with the intermediate outputs hooked."""
    model = depth_annotator.model
    captured: dict[str, np.ndarray] = {}

    def keep(name: str) -> Callable[[torch.nn.Module, tuple, torch.Tensor], None]:
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured[name] = output[0].numpy().copy()

        return hook

    handles = [model.layer_rn[i].register_forward_hook(keep(f"layer{i + 1}_rn")) for i in range(4)]
    handles.append(model.head[4].register_forward_hook(keep("raw_depth_prerelu")))
    handles.append(model.register_forward_hook(keep("raw_depth")))
    try:
        (captured["final_depth_map"],) = depth_annotator([MIDAS.input_rgb])
    finally:
        for handle in handles:
            handle.remove()
    normal = annotators.create("normal_midas", weights=str(weights_dir))
    (captured["final_normal_map"],) = normal([MIDAS.input_rgb])
    return captured


def test_raw_depth_before_relu_matches_reference(parity_run: dict[str, np.ndarray]) -> None:
    golden = MIDAS.golden["raw_depth_prerelu"]
    actual = parity_run["raw_depth_prerelu"][0]
    print(f"raw_depth_prerelu: max |diff| {np.abs(actual - golden).max():.4g} (range {np.abs(golden).max():.4g})")
    assert_raw_close(actual, golden, "raw_depth_prerelu")
    # Dense check: the reference is mostly negative here, so compare signs too.
    assert (np.sign(actual) == np.sign(golden)).mean() > 0.999


def test_raw_depth_matches_reference(parity_run: dict[str, np.ndarray]) -> None:
    assert_raw_close(parity_run["raw_depth"], MIDAS.golden["raw_depth"], "raw_depth")


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_fusion_inputs_match_reference(parity_run: dict[str, np.ndarray], layer: int) -> None:
    features = parity_run[f"layer{layer}_rn"]
    assert_raw_close(features[:4], MIDAS.golden[f"dbg_layer{layer}_rn_first4ch"], f"layer{layer}_rn")
    assert_raw_close(features.mean(axis=(1, 2)), MIDAS.golden[f"dbg_layer{layer}_rn_channel_mean"], f"layer{layer}_rn mean")


@pytest.mark.parametrize("name", ["final_depth_map", "final_normal_map"])
def test_final_maps_match_reference(parity_run: dict[str, np.ndarray], name: str) -> None:
    actual, golden = parity_run[name], MIDAS.golden[name]
    if golden.ndim == 2:  # the reference depth map is single-channel; ours is its HWC3
        assert (actual == actual[:, :, :1]).all()
        actual = actual[:, :, 0]
    fraction = assert_maps_agree(actual, golden, name=name)
    print(f"{name}: {fraction:.5%} identical, max diff {np.abs(actual.astype(int) - golden).max()}")


def test_defaults_are_reference_constants() -> None:
    config = MidasNormal.Config()
    assert config.a == 2 * math.pi and config.bg_th == 0.1
    assert MidasDepth.grayscale and not MidasNormal.grayscale


def test_remap_covers_the_module_and_drops_only_unused_timm_parts() -> None:
    from annotators.nets.dpt_hybrid import DPTHybrid

    keys = [key for key, _, _ in MIDAS.manifest["keys"]]
    remapped = remap_midas_checkpoint(dict.fromkeys(keys, torch.zeros(1)))
    with torch.device("meta"):
        expected = set(DPTHybrid().state_dict())
    assert set(remapped) == expected
    unused = {"pretrained.model.norm.weight", "pretrained.model.norm.bias", "pretrained.model.head.weight", "pretrained.model.head.bias"}
    assert len(remapped) == len(keys) - len(unused) and unused <= set(keys)


def test_training_snapshot_and_missing_keys(tmp_path: Path) -> None:
    state = {k: torch.from_numpy(v) for k, v in seeded_arrays(MIDAS.manifest).items()}
    torch.save({"model": state, "optimizer": {}}, tmp_path / "snapshot.pt")
    model = annotators.create("depth_midas", weights=str(tmp_path / "snapshot.pt")).load().model
    assert torch.equal(model.pos_embed, state["pretrained.model.pos_embed"])
    del state["scratch.refinenet2.out_conv.bias"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="missing key.*fusion.1.out_conv.bias"):
        annotators.create("depth_midas", weights=str(tmp_path / "broken.pt")).load()


@pytest.mark.parametrize("shape", [(80, 120), (64, 96), (96, 160), (33, 47)])
def test_sizes_not_multiple_of_32_give_maps_of_input_size(depth_annotator: MidasDepth, shape: tuple[int, int]) -> None:
    image = MIDAS.input_rgb[: shape[0], : shape[1]].copy()
    (depth,) = depth_annotator([image])
    assert depth.shape == (*shape, 3) and depth.dtype == np.uint8
    assert depth.min() == 0 and depth.max() == 255  # min-max normalised over the cropped area


def test_mixed_sizes_in_one_batch_match_single_calls(depth_annotator: MidasDepth) -> None:
    images = [MIDAS.input_rgb[:64, :96].copy(), MIDAS.input_rgb[100:196, 50:114].copy(), MIDAS.input_rgb[:64, 200:296].copy()]
    batched = depth_annotator(images)
    for image, result in zip(images, batched):
        # oneDNN convolutions round differently for different batch sizes, so not bit-identical.
        assert_maps_agree(result, depth_annotator([image])[0], name=f"{image.shape}")


def test_normal_of_a_ramp_follows_the_sobel_gradient() -> None:
    slope = 0.5
    depth = np.tile(np.arange(40, dtype=np.float32) * slope, (30, 1)) + 1.0
    normalised = depth_to_map(depth)
    normals = normal_image(depth, normalised, a=2 * math.pi, bg_th=0.1)
    # Sobel's 3x3 x-kernel sums 4 weighted central differences over 2 px: 8 * slope inside.
    gx = 8 * slope
    expected = np.array([gx, 0.0, 2 * math.pi]) / math.hypot(gx, 2 * math.pi)
    inner = normals[1:-1, 10:-1].reshape(-1, 3)
    np.testing.assert_array_equal(inner, np.tile((expected * 127.5 + 127.5).astype(np.uint8), (len(inner), 1)))
    # Columns whose normalised depth is under bg_th are background: x is flattened to 0.
    background = normals[:, :3]
    assert (background[..., 0] == 127).all() and (background[..., 2] == 255).all()


def test_constant_depth_gives_black_depth_and_flat_normals() -> None:
    depth = np.zeros((8, 8), np.float32)
    normalised = depth_to_map(depth)
    assert (normalised == 0).all()
    normals = normal_image(depth, normalised, a=2 * math.pi, bg_th=0.1)
    assert (normals == np.array([127, 127, 255], np.uint8)).all()


def test_transformers_layout_computes_the_same_depth() -> None:
    """``Intel/dpt-hybrid-midas`` is the MiDaS checkpoint converted to transformers' DPT: a randomly
    initialised transformers DPT-Hybrid, remapped into our module, must compute the same depth."""
    from transformers import DPTConfig, DPTForDepthEstimation

    from annotators.nets.dpt_hybrid import DPTHybrid
    from annotators.weights import load_strict

    torch.manual_seed(0)
    config = DPTConfig(  # the conversion script's settings for the MiDaS hybrid; timm's LayerNorm eps
        is_hybrid=True,
        neck_hidden_sizes=[256, 512, 768, 768],
        reassemble_factors=[1, 1, 1, 0.5],
        readout_type="project",
        use_batch_norm_in_fusion_residual=False,
        layer_norm_eps=1e-6,
    )
    reference = DPTForDepthEstimation(config).eval()
    # transformers refuses sizes other than its 384 unless told; the embeddings are resized anyway.
    reference.dpt.embeddings.image_size = (64, 64)
    ours = load_strict(DPTHybrid(), reference.state_dict(), remap_midas_checkpoint, source="transformers").eval()
    pre_relu: dict[str, torch.Tensor] = {}
    reference.head.head[4].register_forward_hook(lambda m, a, out: pre_relu.__setitem__("reference", out))
    ours.head[4].register_forward_hook(lambda m, a, out: pre_relu.__setitem__("ours", out))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        expected = reference(pixel_values=x).predicted_depth
        actual = ours(x)
    assert pre_relu["reference"].std() > 1e-3  # a varied output, so the comparison means something
    assert_raw_close(pre_relu["ours"].numpy(), pre_relu["reference"].numpy(), "pre-ReLU depth")
    assert_raw_close(actual.numpy(), expected.numpy(), "depth")
