"""UniFormer-S + UperNet (``seg_ufade20k``) against ``shared/parity/uniformer_ade20k``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import annotators
from annotators.labels import ADE20K, ADE20K_PALETTE
from annotators.nets.uniformer import AUXILIARY_PREFIX, UniformerUperNet, remap_uniformer_checkpoint
from annotators.uniformer import CHECKPOINT, SegUFADE20K, mmseg_rescaled_size
from tests.parity import SeededWeights, assert_f16_close, assert_maps_agree, assert_raw_close, case, seeded_arrays

UNIFORMER = case("uniformer_ade20k")


@pytest.fixture(scope="module")
def annotator(seeded_weights: SeededWeights) -> SegUFADE20K:
    return annotators.create("seg_ufade20k", weights=str(seeded_weights.ensure((CHECKPOINT,)))).load()


@pytest.fixture(scope="module")
def parity_run(annotator: SegUFADE20K) -> dict[str, object]:
    """One annotation of the case input, with the network input and stage outputs hooked."""
    model = annotator.model
    captured: dict[str, object] = {}

    def keep(name: str) -> Callable[[torch.nn.Module, tuple, object], None]:
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            captured[name] = output
            captured[name + "_input"] = args[0]

        return hook

    handles = [
        model.backbone.register_forward_hook(keep("backbone")),
        model.decode_head.bottleneck.register_forward_hook(keep("psp_bottleneck")),
        model.decode_head.fpn_bottleneck.register_forward_hook(keep("fpn_bottleneck")),
        model.decode_head.register_forward_hook(keep("logits")),
    ]
    try:
        (captured["annotation"],) = annotator.annotate([UNIFORMER.input_rgb])
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _channel_mean(x: torch.Tensor) -> np.ndarray:
    return x[0].double().mean(dim=(1, 2)).numpy()


def test_network_input_is_bgr_mmseg_normalised(parity_run: dict[str, object]) -> None:
    x = parity_run["backbone_input"][0].numpy()
    np.testing.assert_allclose(x[:, :64, :64], UNIFORMER.golden["dbg_net_input_crop64"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(x.astype(np.float64).mean(axis=(1, 2)), UNIFORMER.golden["dbg_net_input_channel_mean"], rtol=1e-6)


def test_stage_and_head_means_match_reference(parity_run: dict[str, object]) -> None:
    golden = UNIFORMER.golden
    for stage, output in enumerate(parity_run["backbone"], start=1):
        assert_raw_close(_channel_mean(output), golden[f"dbg_backbone_out{stage}_channel_mean"], f"backbone_out{stage}")
    assert_raw_close(parity_run["backbone"][3][0, :4].numpy(), golden["dbg_backbone_out4_first4ch"], "backbone_out4_first4ch")
    assert_raw_close(_channel_mean(parity_run["psp_bottleneck"]), golden["dbg_psp_bottleneck_channel_mean"], "psp_bottleneck")
    assert_raw_close(_channel_mean(parity_run["fpn_bottleneck"]), golden["dbg_fpn_bottleneck_channel_mean"], "fpn_bottleneck")
    assert_raw_close(_channel_mean(parity_run["logits"]), golden["dbg_seg_logits_channel_mean"], "seg_logits_channel_mean")


def test_logits_at_quarter_resolution_match_reference(parity_run: dict[str, object]) -> None:
    golden = UNIFORMER.golden
    logits = parity_run["logits"][0].numpy()
    print(f"logits: max |diff| {np.abs(logits - golden['raw_seg_logits_f16'].astype(np.float32)).max():.3g} (range {np.abs(golden['raw_seg_logits_max']).max():.3g})")
    assert_f16_close(logits, golden["raw_seg_logits_f16"], "raw_seg_logits_f16")
    assert_raw_close(logits.max(axis=0), golden["raw_seg_logits_max"], "raw_seg_logits_max")
    assert_raw_close(logits[:, 0, 0], golden["raw_seg_logits_pixel0_all"], "raw_seg_logits_pixel0_all")
    agree = assert_maps_agree(logits.argmax(axis=0).astype(np.uint8), golden["raw_seg_logits_argmax"], name="raw_seg_logits_argmax")
    print(f"argmax at 1/4: {agree:.5%} identical")


def test_labels_and_map_match_reference(parity_run: dict[str, object]) -> None:
    annotation = parity_run["annotation"]
    labels = annotation.data
    assert labels.dtype == np.uint8 and labels.shape == (512, 512)
    agree = assert_maps_agree(labels, UNIFORMER.golden["label_map"], name="label_map")
    print(f"label_map: {agree:.5%} identical ({int((labels != UNIFORMER.golden['label_map']).sum())} pixels differ)")
    # the reference's colour map is exactly palette[label]; check the lookup itself exactly
    np.testing.assert_array_equal(annotation.map, np.asarray(ADE20K_PALETTE, np.uint8)[labels])
    assert_maps_agree(annotation.map, UNIFORMER.golden["final_map"], name="final_map")


def test_top_probability_matches_reference(annotator: SegUFADE20K) -> None:
    with torch.inference_mode():
        x = annotator.network_input([UNIFORMER.input_rgb])
        logits = torch.nn.functional.interpolate(annotator.model(x), size=(512, 512), mode="bilinear", align_corners=False)
    assert_f16_close(logits.softmax(dim=1).amax(dim=1)[0].numpy(), UNIFORMER.golden["seg_prob_max_f16"], "seg_prob_max_f16")


def test_palette_is_the_reference_one() -> None:
    np.testing.assert_array_equal(np.asarray(ADE20K_PALETTE, np.uint8), UNIFORMER.golden["palette"])
    assert SegUFADE20K.data_kind is ADE20K


def test_remap_drops_only_the_auxiliary_head() -> None:
    keys = [key for key, _, _ in UNIFORMER.manifest["keys"]]
    checkpoint = {"state_dict": {"module." + k: torch.zeros(1) for k in keys}, "meta": {"CLASSES": (), "PALETTE": []}}
    remapped = remap_uniformer_checkpoint(checkpoint)
    with torch.device("meta"):
        expected = set(UniformerUperNet().state_dict())
    assert set(remapped) == expected
    auxiliary = [k for k in keys if k.startswith(AUXILIARY_PREFIX)]
    assert len(auxiliary) == 8 and len(remapped) == len(keys) - 8


def test_missing_and_unexpected_keys_are_reported(tmp_path: Path) -> None:
    state = {k: torch.from_numpy(v) for k, v in seeded_arrays(UNIFORMER.manifest).items()}
    del state["decode_head.fpn_bottleneck.bn.running_var"]
    state["decode_head.extra.weight"] = torch.zeros(1)
    path = tmp_path / CHECKPOINT
    torch.save({"state_dict": state, "meta": {"CLASSES": ("wall",), "PALETTE": [[120, 120, 120]]}}, path)
    with pytest.raises(ValueError, match=r"upernet_global_small.pth: .*missing key.*fpn_bottleneck.bn.running_var.*unexpected key.*decode_head.extra.weight"):
        annotators.create("seg_ufade20k", weights=str(path)).load()


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((512, 512), (512, 512)), ((512, 768), (512, 768)), ((256, 384), (512, 768)), ((375, 500), (512, 683)), ((100, 1000), (205, 2048))],
)
def test_rescale_follows_mmseg(shape: tuple[int, int], expected: tuple[int, int]) -> None:
    assert mmseg_rescaled_size(*shape, 512, 2048) == expected


def test_other_sizes_run_at_short_side_512_and_come_back_at_input_size(annotator: SegUFADE20K) -> None:
    image = UNIFORMER.input_rgb[100:196, 50:178].copy()  # 96 x 128 -> the network sees 512 x 683
    with torch.inference_mode():
        assert tuple(annotator.network_input([image]).shape) == (1, 3, 512, 683)
    (annotation,) = annotator.annotate([image])
    assert annotation.map.shape == (96, 128, 3) and annotation.data.shape == (96, 128)
    np.testing.assert_array_equal(annotation.map, ADE20K.colorize(annotation.data))


def test_resolution_moves_the_network_size(seeded_weights: SeededWeights) -> None:
    small = annotators.create("seg_ufade20k", weights=str(seeded_weights.ensure((CHECKPOINT,))), resolution=64)
    with torch.inference_mode():
        assert tuple(small.network_input([UNIFORMER.input_rgb]).shape) == (1, 3, 64, 64)
    (labels,) = [a.data for a in small.annotate([UNIFORMER.input_rgb])]
    assert labels.shape == (512, 512)
