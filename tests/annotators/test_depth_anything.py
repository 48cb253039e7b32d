"""Depth Anything V2 / V1 against ``shared/parity/depth_anything_v2`` (ViT-L, seeded weights), the
remap of the authors' checkpoints, the transformers conversions, and the weights declarations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import annotators
from annotators.depth_anything import DepthAnything, DepthAnythingV2, network_input
from annotators.image import multiple_of_size
from annotators.nets.depth_anything import build_depth_anything, remap_depth_anything_checkpoint
from annotators.weights import WeightsNotFoundError
from tests.parity import SeededWeights, assert_maps_agree, assert_raw_close, case
from tests.seeded_depth import depth_anything_layout

DA2 = case("depth_anything_v2")


@pytest.fixture(scope="module")
def parity_run(seeded_weights: SeededWeights) -> dict[str, np.ndarray]:
    """One ViT-L pass on the case input through the user path (the MackinationsAi-style
    ``.safetensors`` found for the declared ``.pth``), with the intermediate outputs hooked."""
    folder = seeded_weights.ensure(("depth_anything_v2_vitl.pth",))
    assert (folder / "depth_anything_v2_vitl.safetensors").is_file()
    annotator = annotators.create("depth_anything_v2", weights=str(folder)).load()
    model = annotator.model
    captured: dict[str, np.ndarray] = {}

    def keep(name: str, pick: Callable[[object], torch.Tensor] = lambda out: out) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            captured[name] = pick(output)[0].float().numpy().copy()

        return hook

    handles = [model.backbone.embeddings.patch_embeddings.register_forward_hook(keep("patch_embed"))]
    handles.append(model.backbone.register_forward_hook(keep("feats", lambda out: torch.stack(out.feature_maps, 1))))
    handles += [model.neck.convs[i].register_forward_hook(keep(f"layer{i + 1}_rn")) for i in range(4)]
    handles += [model.neck.fusion_stage.layers[i].register_forward_hook(keep(f"path_{4 - i}")) for i in range(4)]
    handles.append(model.head.conv1.register_forward_hook(keep("output_conv1")))
    handles.append(model.head.conv3.register_forward_hook(keep("raw_depth_prerelu", lambda out: out[:, 0])))
    handles.append(model.register_forward_hook(keep("raw_depth", lambda out: out.predicted_depth)))
    try:
        captured["final_map"] = annotator.annotate([DA2.input_rgb], single_channel=True)[0].map
    finally:
        for handle in handles:
            handle.remove()
    tokens = torch.zeros(1, 1 + 37 * 37, 1)
    with torch.inference_mode():
        captured["pos_embed"] = model.backbone.embeddings.interpolate_pos_encoding(tokens, 518, 518)[0].numpy().copy()
    return captured


def test_network_input_matches_reference() -> None:
    actual = network_input(DA2.input_rgb)
    golden = DA2.golden["net_input"][0]
    assert actual.shape == golden.shape == (3, 518, 518)
    np.testing.assert_allclose(actual, golden, rtol=0, atol=1e-6)


def test_embeddings_match_reference(parity_run: dict[str, np.ndarray]) -> None:
    patches = parity_run["patch_embed"].T.reshape(-1, 37, 37)
    assert_raw_close(patches[:4], DA2.golden["dbg_patch_embed_first4ch"], "patch_embed")
    position = parity_run["pos_embed"]
    assert_raw_close(position[0], DA2.golden["dbg_pos_embed_used_cls_row"], "pos_embed cls")
    assert_raw_close(position[1:].T.reshape(-1, 37, 37)[:4], DA2.golden["dbg_pos_embed_used_first4ch"], "pos_embed")


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_encoder_features_match_reference(parity_run: dict[str, np.ndarray], level: int) -> None:
    tokens = parity_run["feats"][level]  # (1 + 37*37, 1024), normalised
    patches = tokens[1:]
    golden = {k: DA2.golden[f"dbg_feat{level}_{k}"] for k in ("token_mean", "channel_mean", "first4ch", "cls_token")}
    assert_raw_close(tokens[0], golden["cls_token"], f"feat{level} cls")
    assert_raw_close(patches.mean(axis=1).reshape(37, 37), golden["token_mean"], f"feat{level} token mean")
    assert_raw_close(patches.mean(axis=0), golden["channel_mean"], f"feat{level} channel mean")
    assert_raw_close(patches.T.reshape(-1, 37, 37)[:4], golden["first4ch"], f"feat{level} first channels")


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_head_features_match_reference(parity_run: dict[str, np.ndarray], level: int) -> None:
    features = parity_run[f"layer{level}_rn"]
    assert_raw_close(features.mean(axis=(1, 2)), DA2.golden[f"dbg_layer{level}_rn_channel_mean"], f"layer{level}_rn")
    assert_raw_close(features.mean(axis=0), DA2.golden[f"dbg_layer{level}_rn_spatial_mean"], f"layer{level}_rn spatial")
    path = parity_run[f"path_{level}"]
    assert_raw_close(path.mean(axis=(1, 2)), DA2.golden[f"dbg_path_{level}_channel_mean"], f"path_{level}")


def test_raw_depth_matches_reference(parity_run: dict[str, np.ndarray]) -> None:
    conv1 = parity_run["output_conv1"].mean(axis=(1, 2))
    assert_raw_close(conv1, DA2.golden["dbg_output_conv1_channel_mean"], "output_conv1")
    for name in ("raw_depth_prerelu", "raw_depth"):
        actual, golden = parity_run[name], DA2.golden[name]
        print(f"{name}: max |diff| {np.abs(actual - golden).max():.4g} (range {np.abs(golden).max():.4g})")
        assert_raw_close(actual, golden, name)
    resized = torch.nn.functional.interpolate(torch.from_numpy(parity_run["raw_depth"])[None, None], (512, 512), mode="bilinear", align_corners=False)
    assert_raw_close(np.array([resized.min(), resized.max()]), DA2.golden["depth_resized_min_max"], "depth_resized_min_max")
    # 44% of the reference is clipped to 0 by the ReLU: the signs before it must agree too.
    assert (np.sign(parity_run["raw_depth_prerelu"]) == np.sign(DA2.golden["raw_depth_prerelu"])).mean() > 0.999


def test_final_map_matches_reference(parity_run: dict[str, np.ndarray]) -> None:
    actual, golden = parity_run["final_map"], DA2.golden["final_map"]
    fraction = assert_maps_agree(actual, golden, name="final_map")
    print(f"final_map: {fraction:.5%} identical, max diff {np.abs(actual.astype(int) - golden).max()}")
    assert np.abs(actual.astype(int) - golden).max() <= 1


def test_layout_of_every_size_and_remap_cover_the_model() -> None:
    # The seeded writers' layout is the parity manifest's for ViT-L (names, shapes, order) ...
    assert depth_anything_layout("vitl") == [(k, tuple(s)) for k, s, _ in DA2.manifest["keys"]]
    # ... and, remapped, exactly the transformers model of each size, for both versions.
    from transformers import DepthAnythingForDepthEstimation

    from annotators.nets.depth_anything import model_config

    for encoder in ("vits", "vitb", "vitl"):
        checkpoint = {k: torch.empty(s, device="meta") for k, s in depth_anything_layout(encoder)}
        remapped = remap_depth_anything_checkpoint(checkpoint)
        for version in (1, 2):
            with torch.device("meta"):
                expected = DepthAnythingForDepthEstimation(model_config(encoder, version)).state_dict()
            assert {k: tuple(v.shape) for k, v in remapped.items()} == {k: tuple(v.shape) for k, v in expected.items()}


def test_qkv_is_split_into_query_key_value_rows() -> None:
    weight = torch.arange(12.0).reshape(6, 2)
    out = remap_depth_anything_checkpoint({"pretrained.blocks.3.attn.qkv.weight": weight, "pretrained.blocks.3.attn.qkv.bias": torch.arange(6.0)})
    prefix = "backbone.encoder.layer.3.attention."
    assert torch.equal(out[prefix + "q_proj.weight"], weight[:2]) and torch.equal(out[prefix + "v_proj.weight"], weight[4:])
    assert torch.equal(out[prefix + "k_proj.bias"], torch.tensor([2.0, 3.0]))


def test_v1_and_v2_differ_only_in_the_blocks_that_feed_the_head() -> None:
    from annotators.nets.depth_anything import model_config

    for encoder, v2_blocks, v1_blocks in (("vits", [3, 6, 9, 12], [9, 10, 11, 12]), ("vitl", [5, 12, 18, 24], [21, 22, 23, 24])):
        v1, v2 = model_config(encoder, 1).to_dict(), model_config(encoder, 2).to_dict()
        assert v2["backbone_config"].pop("out_indices") == v2_blocks and v1["backbone_config"].pop("out_indices") == v1_blocks
        for config in (v1, v2):
            config["backbone_config"].pop("out_features")
        assert v1 == v2


def _cubic_resample_rows(grid: np.ndarray, scale: float, size: int) -> np.ndarray:
    """PyTorch's bicubic (A = -0.75, clamped borders) along axis 0 with a *given* scale factor: the
    independent statement of what DINOv2's interpolation computes."""

    def weight(t: np.ndarray) -> np.ndarray:
        t = np.abs(t)
        return np.where(t <= 1, (1.25 * t - 2.25) * t * t + 1, np.where(t < 2, ((-0.75 * t + 3.75) * t - 6) * t + 3, 0.0))

    out = np.zeros((size, *grid.shape[1:]))
    for row in range(size):
        source = (row + 0.5) / scale - 0.5
        base = int(np.floor(source))
        for tap in range(base - 1, base + 3):
            out[row] += weight(np.array(source - tap)) * grid[min(max(tap, 0), len(grid) - 1)]
    return out


def test_non_square_inputs_resample_positions_with_dinov2s_scale_factor() -> None:
    model = build_depth_anything("vits", 2)
    embeddings = model.backbone.embeddings
    torch.nn.init.normal_(embeddings.position_embeddings)
    grid = embeddings.position_embeddings[0, 1:].detach().double().numpy().reshape(37, 37, -1)
    with torch.inference_mode():
        square = embeddings.interpolate_pos_encoding(torch.zeros(1, 1 + 37 * 37, 1), 518, 518)
        wide = embeddings.interpolate_pos_encoding(torch.zeros(1, 1 + 37 * 56, 1), 518, 784)[0, 1:].numpy()
    assert square is embeddings.position_embeddings  # the trained grid as it is
    # Rows keep their count (37) but are still resampled, by 37/37.1: what the reference computes.
    rows = _cubic_resample_rows(grid, 37.1 / 37, 37)
    expected = _cubic_resample_rows(rows.transpose(1, 0, 2), 56.1 / 37, 56).transpose(1, 0, 2)
    np.testing.assert_allclose(wide.reshape(37, 56, -1), expected, atol=2e-5)
    assert np.abs(rows - grid).max() > 1e-3  # not the identity that transformers' own resize gives


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((512, 512), (518, 518)), ((512, 768), (518, 784)), ((96, 64), (784, 518)), ((200, 333), (518, 868)), ((1000, 519), (994, 518))],
)
def test_network_size_is_the_reference_lower_bound_rule(shape: tuple[int, int], expected: tuple[int, int]) -> None:
    # 512x768: 768 * 518/512 = 777 = 55.5 patches, rounded half to even -> 56 (the README's coffee case).
    # 200x333: 333 * 2.59 = 862.47 -> 61.6 -> 62 patches. 1000x519: 998.07 -> 71.3 -> 71 patches.
    assert multiple_of_size(*shape, (518, 518), 14, "lower_bound") == expected
    assert network_input(np.zeros((*shape, 3), np.uint8)).shape == (3, *expected)


@pytest.fixture(scope="module")
def vits_folders(seeded_weights: SeededWeights, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Seeded ViT-S weights in the authors' layout, and the same weights as a transformers folder."""
    original = seeded_weights.ensure(("depth_anything_v2_vits.pth",))
    converted = tmp_path_factory.mktemp("hf") / "Depth-Anything-V2-Small-hf"
    annotators.create("depth_anything_v2", encoder="vits", weights=str(original)).load().model.save_pretrained(converted)
    return original, converted


def test_transformers_folder_gives_the_maps_of_the_original_checkpoint(vits_folders: tuple[Path, Path], photos: list[np.ndarray]) -> None:
    original, converted = vits_folders
    images = [photos[1][:200, :300].copy(), photos[2][:150, :150].copy()]  # non-square and square
    ours = annotators.create("depth_anything_v2", encoder="vits", weights=str(original))(images)
    theirs = annotators.create("depth_anything_v2", encoder="vits", weights_format="transformers", weights=str(converted.parent))(images)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.std() > 0
        np.testing.assert_array_equal(a, b)


def test_v1_runs_the_same_weights_through_other_blocks(vits_folders: tuple[Path, Path], seeded_weights: SeededWeights, photos: list[np.ndarray]) -> None:
    v1 = annotators.create("depth_anything", encoder="vits", weights=str(seeded_weights.ensure(("depth_anything_vits14.pth",))))
    v2 = annotators.create("depth_anything_v2", encoder="vits", weights=str(vits_folders[0]))
    assert v1.model.config.backbone_config.out_indices == [9, 10, 11, 12]
    assert v2.model.config.backbone_config.out_indices == [3, 6, 9, 12]
    x = torch.from_numpy(network_input(photos[0][:120, :160].copy()))[None]
    with torch.inference_mode():
        depth_v1, depth_v2 = (a.model(pixel_values=x).predicted_depth for a in (v1, v2))
    assert depth_v1.shape == depth_v2.shape == (1, 518, 686)
    assert not torch.allclose(depth_v1, depth_v2, rtol=0.1)


def test_transformers_folder_of_another_size_is_refused(vits_folders: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="holds a vits model, not vitl; pass encoder=vits"):
        annotators.create("depth_anything_v2", weights_format="transformers", weights=str(vits_folders[1])).load()


def test_checkpoint_of_another_size_fails_the_strict_load(vits_folders: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="depth_anything_v2_vits.pth: does not match DepthAnythingForDepthEstimation"):
        annotators.create("depth_anything_v2", encoder="vitb", weights=str(vits_folders[0] / "depth_anything_v2_vits.pth")).load()


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("depth_anything_v2", {}, "`hf download depth-anything/Depth-Anything-V2-Large depth_anything_v2_vitl.pth`"),
        ("depth_anything_v2", {"encoder": "vits"}, "`hf download depth-anything/Depth-Anything-V2-Small depth_anything_v2_vits.pth`"),
        ("depth_anything_v2", {"weights_format": "transformers", "encoder": "vitb"}, "`hf download depth-anything/Depth-Anything-V2-Base-hf`"),
        ("depth_anything", {}, "`hf download LiheYoung/Depth-Anything checkpoints/depth_anything_vitl14.pth --repo-type space`"),
        ("depth_anything", {"weights_format": "transformers"}, "`hf download LiheYoung/depth-anything-large-hf`"),
    ],
)
def test_missing_weights_is_one_line_naming_the_file_and_the_fix(no_weights: Path, name: str, params: dict, expected: str) -> None:
    annotator = annotators.create(name, **params)
    with pytest.raises(WeightsNotFoundError) as err:
        annotator([np.zeros((32, 32, 3), np.uint8)])
    message = str(err.value)
    assert "\n" not in message and expected in message and "--weights" in message


def test_cli_missing_weights_is_one_line(no_weights: Path) -> None:
    from typer.testing import CliRunner

    from annotators.image import encode_png
    from cli.annotate import app

    photo = no_weights / "photo.png"
    photo.write_bytes(encode_png(np.full((64, 64, 3), 128, np.uint8)))
    result = CliRunner().invoke(app, ["depth_anything_v2", str(photo), "-o", str(no_weights / "x.png")], terminal_width=400)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "depth_anything_v2_vitl.pth" in lines[0]


def test_licence_follows_the_size() -> None:
    licences = {e: annotators.create("depth_anything_v2", encoder=e).weights.license for e in ("vits", "vitb", "vitl")}
    assert licences == {"vits": "Apache-2.0", "vitb": "CC-BY-NC-4.0", "vitl": "CC-BY-NC-4.0"}
    assert annotators.create("depth_anything_v2", weights_format="transformers").weights.license == "CC-BY-NC-4.0"
    assert {annotators.create("depth_anything", encoder=e).weights.license for e in ("vits", "vitb", "vitl")} == {"Apache-2.0"}
    listed = {info.name: info.weights_license for info in annotators.available()}
    assert "CC-BY-NC-4.0" in listed["depth_anything_v2"] and "Apache-2.0 (vits)" in listed["depth_anything_v2"]
    assert listed["depth_anything"] == "Apache-2.0"


def test_defaults_are_sd_webuis() -> None:
    config = DepthAnythingV2.Config()
    assert config.encoder == "vitl" and config.weights_format == "original"
    assert DepthAnythingV2.grayscale and DepthAnything.grayscale
    assert DepthAnythingV2.weights.files[0].name == "depth_anything_v2_vitl.pth"


def test_constant_depth_gives_a_black_map() -> None:
    from annotators.depth_anything import depth_to_uint8

    assert (depth_to_uint8(torch.full((1, 4, 5), 3.0)) == 0).all()
    ramp = depth_to_uint8(torch.linspace(1.0, 2.0, 11).reshape(1, 1, 11))
    assert ramp[0, 0, 0] == 0 and ramp[0, 0, -1] == 255 and ramp[0, 0, 5] == 127  # 127.5 truncated
