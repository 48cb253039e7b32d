"""OneFormer Swin-L (``seg_ofade20k``, ``seg_ofcoco``) against ``shared/parity/oneformer_ade20k`` and
``oneformer_coco``: the full seeded checkpoints through the detectron2 remap, one full-size forward
per case, and the decode-only cases for post-processing and drawing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import annotators
from annotators.labels import ADE20K, ADE20K_PALETTE, COCO_PANOPTIC, COCO_PANOPTIC_PALETTE
from annotators.nets.oneformer import TRAINING_ONLY_PREFIXES, oneformer_swin_large_config, remap_oneformer_checkpoint
from annotators.oneformer import SEMANTIC_TASK_TOKENS, SegOFADE20K, SegOFCOCO, resize_shortest_edge, semantic_inference
from annotators.seg_render import draw_sem_seg, flat
from annotators.weights import WeightsNotFoundError
from tests.parity import SeededWeights, assert_f16_close, assert_maps_agree, assert_raw_close, case, relative_position_index

CASES = {"seg_ofade20k": case("oneformer_ade20k"), "seg_ofcoco": case("oneformer_coco")}
CLASSES = {"seg_ofade20k": SegOFADE20K, "seg_ofcoco": SegOFCOCO}
PALETTES = {"seg_ofade20k": ADE20K_PALETTE, "seg_ofcoco": COCO_PANOPTIC_PALETTE}


def _checkpoint(name: str) -> str:
    return CLASSES[name].weights.files[0].name


@pytest.fixture(scope="module", params=list(CASES))
def parity_run(request: pytest.FixtureRequest, seeded_weights: SeededWeights) -> dict[str, Any]:
    """One annotation of the case input by a freshly loaded annotator, with intermediate outputs hooked."""
    name = request.param
    annotator = annotators.create(name, weights=str(seeded_weights.ensure((_checkpoint(name),)))).load()
    network = annotator.model.model
    captured: dict[str, Any] = {"name": name, "annotator": annotator, "class_logits_per_layer": [], "mask_embeddings_per_layer": []}

    def keep(key: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if isinstance(captured.get(key), list):
                captured[key].append(output)
            else:
                captured[key] = output
                captured[key + "_input"] = args

        return hook

    decoder = network.transformer_module.decoder
    hooks = [
        (network.pixel_level_module.encoder, "backbone"),
        (network.pixel_level_module.decoder, "pixel_decoder"),
        (network.pixel_level_module.decoder.layer_1, "fpn_out0"),
        (network.task_encoder, "task"),
        (decoder.query_transformer, "query_transformer"),
        (decoder.class_embed, "class_logits_per_layer"),
        (decoder.mask_embed, "mask_embeddings_per_layer"),
    ]
    handles = [module.register_forward_hook(keep(key)) for module, key in hooks]
    forward = annotator.forward_logits

    def forward_and_keep(model: torch.nn.Module, batch: list[np.ndarray]) -> tuple[Any, ...]:
        captured["logits"] = result = forward(model, batch)
        return result

    annotator.forward_logits = forward_and_keep  # type: ignore[method-assign]
    try:
        (captured["annotation"],) = annotator.annotate([CASES[name].input_rgb])
    finally:
        for handle in handles:
            handle.remove()
        del annotator.forward_logits
    class_logits, mask_logits, padded, size = captured["logits"]
    captured["class_logits"], captured["mask_logits"] = class_logits, mask_logits
    captured["scores"] = semantic_inference(class_logits, mask_logits, padded, size, CASES[name].input_rgb.shape[:2])
    yield captured
    annotator.close()


def _channel_mean(x: torch.Tensor) -> np.ndarray:
    return x[0].double().mean(dim=(-2, -1)).numpy()


def test_network_input_and_task_match_reference(parity_run: dict[str, Any]) -> None:
    golden = CASES[parity_run["name"]].golden
    task_tokens, image = parity_run["task_input"][0], parity_run["backbone_input"][0]
    x = image[0].numpy()  # the backbone's input is the normalised, padded image
    assert x.shape[1:] == ((640, 640) if parity_run["name"] == "seg_ofade20k" else (800, 800))
    np.testing.assert_allclose(x.astype(np.float64).mean(axis=(1, 2)), golden["dbg_net_input_channel_mean"], rtol=1e-5)
    if "net_input_resized_u8" in golden:
        restored = x.transpose(1, 2, 0) * np.array([58.395, 57.12, 57.375]) + np.array([123.675, 116.28, 103.53])
        np.testing.assert_allclose(restored, golden["net_input_resized_u8"], atol=1e-3)
    np.testing.assert_array_equal(task_tokens[0].numpy(), golden["dbg_task_tokens"])
    assert_raw_close(parity_run["task"][0].numpy(), golden["dbg_task_mlp_out"], "task_mlp_out")


def test_backbone_and_pixel_decoder_match_reference(parity_run: dict[str, Any]) -> None:
    golden = CASES[parity_run["name"]].golden
    features = parity_run["backbone"].feature_maps
    for level, feature in enumerate(features, start=2):
        assert_raw_close(_channel_mean(feature), golden[f"dbg_backbone_res{level}_channel_mean"], f"backbone_res{level}")
    assert_raw_close(features[3][0, :4].numpy(), golden["dbg_backbone_res5_first4ch"], "backbone_res5_first4ch")
    decoded = parity_run["pixel_decoder"]
    for level, feature in enumerate(decoded.multi_scale_features):
        assert_raw_close(_channel_mean(feature), golden[f"dbg_pixdec_encoder_level{level}_channel_mean"], f"encoder_level{level}")
    assert_raw_close(_channel_mean(parity_run["fpn_out0"]), golden["dbg_pixdec_fpn_out0_channel_mean"], "fpn_out0")
    assert_raw_close(_channel_mean(decoded.mask_features), golden["dbg_mask_features_channel_mean"], "mask_features")
    assert_raw_close(decoded.mask_features[0, :4].numpy(), golden["dbg_mask_features_first4ch"], "mask_features_first4ch")


def test_decoder_layers_match_reference(parity_run: dict[str, Any]) -> None:
    golden = CASES[parity_run["name"]].golden
    queries = parity_run["query_transformer"][0]  # (batch, queries - 1, hidden)
    assert_raw_close(queries[:, :4].numpy(), golden["dbg_class_transformer_out_q0to3"], "class_transformer_out_q0to3")
    per_layer = torch.stack([logits[0, 0] for logits in parity_run["class_logits_per_layer"]]).numpy()
    assert_raw_close(per_layer, golden["dbg_query0_class_logits_per_layer"], "query0_class_logits_per_layer")
    # a query's mean mask logit is its mask embedding dotted with the mean mask feature
    mean_feature = parity_run["pixel_decoder"].mask_features[0].mean(dim=(1, 2))
    means = torch.stack([embedding[0] @ mean_feature for embedding in parity_run["mask_embeddings_per_layer"]]).numpy()
    assert_raw_close(means, golden["dbg_mask_logits_mean_per_query_per_layer"], "mask_logits_mean_per_query_per_layer")


def test_raw_class_and_mask_logits_match_reference(parity_run: dict[str, Any]) -> None:
    golden = CASES[parity_run["name"]].golden
    class_logits = parity_run["class_logits"][0].numpy()
    mask_logits = parity_run["mask_logits"][0].numpy()
    reference_masks = golden["raw_mask_logits_q0to15_f16"].astype(np.float32)
    print(
        f"{parity_run['name']}: class logits max |diff| {np.abs(class_logits - golden['raw_class_logits']).max():.3g} "
        f"(range {np.abs(golden['raw_class_logits']).max():.3g}); mask logits q0-15 max |diff| "
        f"{np.abs(mask_logits[:16] - reference_masks).max():.3g} (range {np.abs(reference_masks).max():.3g})"
    )
    assert_raw_close(class_logits, golden["raw_class_logits"], "raw_class_logits")
    assert_f16_close(mask_logits[:16], golden["raw_mask_logits_q0to15_f16"], "raw_mask_logits_q0to15_f16")
    crop = slice(60, 100) if parity_run["name"] == "seg_ofade20k" else slice(80, 120)
    assert_f16_close(mask_logits[:, crop, crop], golden["raw_mask_logits_crop_f16"], "raw_mask_logits_crop_f16")
    assert_raw_close(mask_logits.mean(axis=(1, 2)), golden["dbg_mask_logits_mean_per_query"], "mask_logits_mean_per_query")


def test_semantic_scores_labels_and_map_match_reference(parity_run: dict[str, Any]) -> None:
    golden = CASES[parity_run["name"]].golden
    scores = parity_run["scores"][0]
    top2 = scores.topk(2, dim=0).values.numpy()
    assert_raw_close(top2[0], golden["sem_seg_top1"], "sem_seg_top1")
    assert_raw_close(top2[1], golden["sem_seg_top2"], "sem_seg_top2")
    if "sem_seg_crop64" in golden:
        assert_raw_close(scores[:, :64, :64].numpy(), golden["sem_seg_crop64"], "sem_seg_crop64")
    annotation = parity_run["annotation"]
    labels = assert_maps_agree(annotation.data, golden["label_map"], name="label_map")
    drawn = assert_maps_agree(annotation.map, golden["final_map"], name="final_map")
    print(f"{parity_run['name']}: label_map {labels:.5%}, final_map {drawn:.5%} identical")


def test_same_weights_in_transformers_format_give_the_same_result(parity_run: dict[str, Any], tmp_path: Path) -> None:
    """The detectron2 checkpoint, remapped and saved as a transformers model folder, loads through
    ``from_pretrained`` and annotates identically (at a small size, to keep the test quick)."""
    name = parity_run["name"]
    folder = tmp_path / CLASSES[name].converted.model_id.rsplit("/", 1)[-1]
    detectron2_model = parity_run["annotator"].model
    detectron2_model.save_pretrained(folder)
    image = CASES[name].input_rgb[::8, ::8].copy()
    converted = annotators.create(name, weights=str(folder), resolution=64)
    assert converted.locate_weights() == [folder]
    with torch.inference_mode():
        # the same pipeline at the same size, on the network loaded from the detectron2 checkpoint
        expected = converted.forward_logits(detectron2_model, [image])
        got = converted.forward_logits(converted.model, [image])
        scores = converted.predict_scores(detectron2_model, [image])
    for a, b in zip(got[:2], expected[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert got[2:] == expected[2:]
    (annotation,) = converted.annotate([image])
    np.testing.assert_array_equal(annotation.data, scores.argmax(dim=1)[0].numpy())
    converted.close()


def test_palettes_and_kinds_are_the_reference_ones() -> None:
    np.testing.assert_array_equal(np.asarray(ADE20K_PALETTE, np.uint8), CASES["seg_ofade20k"].golden["palette"])
    np.testing.assert_array_equal(np.asarray(COCO_PANOPTIC_PALETTE, np.uint8), CASES["seg_ofcoco"].golden["palette"])
    assert SegOFADE20K.data_kind is ADE20K and SegOFCOCO.data_kind is COCO_PANOPTIC


@pytest.mark.parametrize("name", list(CASES))
def test_decode_case_post_processing_and_drawing(name: str) -> None:
    """The reference post-processing and drawing on stored network outputs (74 / 65 labels)."""
    golden = CASES[name].golden
    short = 640 if name == "seg_ofade20k" else 800
    class_logits = torch.from_numpy(golden["decode_in_class_logits"])[None]
    mask_logits = torch.from_numpy(golden["decode_in_mask_logits_f16exact"].astype(np.float32))[None]
    scores = semantic_inference(class_logits, mask_logits, (short, short), (short, short), (512, 512))[0]
    if "decode_sem_seg_top1" in golden:
        assert_raw_close(scores.max(dim=0).values.numpy(), golden["decode_sem_seg_top1"], "decode_sem_seg_top1")
    labels = scores.argmax(dim=0).numpy().astype(np.uint8)
    agree = assert_maps_agree(labels, golden["decode_label_map"], name="decode_label_map")
    assert len(np.unique(labels)) > 60
    # drawing checked on the reference's labels (exact) and on ours
    np.testing.assert_array_equal(draw_sem_seg(golden["decode_label_map"], PALETTES[name]), golden["decode_final_map"])
    drawn = assert_maps_agree(draw_sem_seg(labels, PALETTES[name]), golden["decode_final_map"], name="decode_final_map")
    print(f"{name} decode: labels {agree:.5%}, map {drawn:.5%} identical")


@pytest.mark.parametrize("name", list(CASES))
def test_flat_drawing_equals_the_reference_inside_regions(name: str) -> None:
    """``edges=False``: exactly palette[label]; the reference differs only on region borders."""
    golden = CASES[name].golden
    labels, reference = golden["decode_label_map"], golden["decode_final_map"]
    plain = flat(labels, PALETTES[name])
    np.testing.assert_array_equal(plain, np.asarray(PALETTES[name], np.uint8)[labels])
    inside = (reference == plain).all(axis=-1)
    assert 0.85 < inside.mean() < 0.95  # the borders are about a pixel wide around 60+ regions
    border = ~inside
    assert (reference[border] >= plain[border]).all()  # white edges only ever lighten


def test_edges_option_switches_the_drawing() -> None:
    labels = CASES["seg_ofade20k"].golden["decode_label_map"]
    plain = annotators.create("seg_ofade20k", edges=False)
    np.testing.assert_array_equal(plain.draw(labels), flat(labels, ADE20K_PALETTE))
    drawn = annotators.create("seg_ofade20k")
    np.testing.assert_array_equal(drawn.draw(labels), CASES["seg_ofade20k"].golden["decode_final_map"])


def test_task_tokens_are_the_reference_ones() -> None:
    for c in CASES.values():
        np.testing.assert_array_equal(np.asarray(SEMANTIC_TASK_TOKENS), c.golden["dbg_task_tokens"])


@pytest.mark.parametrize(
    ("shape", "short", "max_size", "expected"),
    [((512, 512), 640, 2560, (640, 640)), ((512, 768), 640, 2560, (640, 960)), ((512, 512), 800, 1333, (800, 800)), ((100, 1000), 800, 1333, (133, 1333)), ((375, 500), 640, 2560, (640, 853))],
)
def test_resize_follows_detectron2(shape: tuple[int, int], short: int, max_size: int, expected: tuple[int, int]) -> None:
    assert resize_shortest_edge(*shape, short, max_size) == expected


def test_odd_sizes_are_padded_to_32_and_come_back_at_input_size(seeded_weights: SeededWeights) -> None:
    annotator = seeded_weights.create("seg_ofade20k", resolution=72)  # the pipeline on the tiny stand-in
    image = CASES["seg_ofade20k"].input_rgb[:60, :90].copy()  # -> 72 x 108, padded to 96 x 128
    with torch.inference_mode():
        x, size = annotator.network_input([image])
    assert size == (72, 108) and tuple(x.shape) == (1, 3, 96, 128)
    assert (x[:, :, 72:] == 0).all() and (x[:, :, :, 108:] == 0).all()
    (annotation,) = annotator.annotate([image])
    assert annotation.map.shape == (60, 90, 3) and annotation.data.shape == (60, 90)
    annotator.close()


def test_remap_covers_the_network_and_drops_only_training_keys() -> None:
    manifest = CASES["seg_ofade20k"].manifest
    keys = [key for key, _, _ in manifest["keys"]]
    shapes = {key: shape for key, shape, _ in manifest["keys"]}
    training = {"text_encoder.token_embedding.weight": [49408, 256], "text_projector.layers.0.weight": [256, 256], "prompt_ctx.weight": [16, 256]}
    checkpoint = {"model": {"module." + k: torch.zeros(s) for k, s in {**shapes, **training}.items()}}
    remapped = remap_oneformer_checkpoint(checkpoint)
    config = oneformer_swin_large_config(250, ADE20K.classes)
    from transformers import OneFormerModel

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in OneFormerModel(config).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in remapped.items()} == expected
    assert not any(k.startswith(TRAINING_ONLY_PREFIXES) for k in remapped)
    index_keys = [k for k in keys if k.endswith("relative_position_index")]
    fused = [k for k in keys if k.endswith(("attn.qkv.weight", "attn.qkv.bias", "self_attn.in_proj_weight", "self_attn.in_proj_bias")) and "class_transformer" not in k]
    # dropped: 24 index buffers; each fused q/k/v becomes three; added: the unused final Swin norm (2)
    assert len(remapped) == len(keys) - len(index_keys) + 2 * len(fused) + 2


def test_dropped_position_index_equals_the_one_transformers_computes() -> None:
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias

    bias = SwinRelativePositionBias(num_heads=6, window_size=(12, 12))
    np.testing.assert_array_equal(bias.relative_position_index.view(144, 144).numpy(), relative_position_index(12))


def test_qkv_split_keeps_query_key_value_order() -> None:
    weight = torch.arange(9 * 3, dtype=torch.float32).reshape(9, 3)
    remapped = remap_oneformer_checkpoint({"backbone.layers.1.blocks.0.attn.qkv.weight": weight})
    prefix = "pixel_level_module.encoder.swin.encoder.layers.1.blocks.0.attention."
    torch.testing.assert_close(remapped[prefix + "q_proj.weight"], weight[:3])
    torch.testing.assert_close(remapped[prefix + "k_proj.weight"], weight[3:6])
    torch.testing.assert_close(remapped[prefix + "v_proj.weight"], weight[6:])


def test_missing_weights_name_the_detectron2_file(no_weights: Path, tmp_path: Path) -> None:  # no_weights empties tmp_path's Hub cache
    annotator = annotators.create("seg_ofcoco", weights=str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="150_16_swin_l_oneformer_coco_100ep.pth not found") as err:
        annotator.load()
    assert "\n" not in str(err.value)
    assert not SegOFCOCO.weights_present(str(tmp_path))
