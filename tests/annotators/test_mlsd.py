"""M-LSD against ``shared/parity/mlsd``: the raw TP map through the user's loading path, the decoder
bit for bit on the fixture's decode-only case, and the annotator on small and mixed-size inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import annotators
from annotators.mlsd import MLSD, decode_segments, draw_lines, network_size, segments_to_lines
from tests.parity import assert_f16_close, assert_raw_close, case

MLSD_CASE = case("mlsd")
CHECKPOINT = "mlsd_large_512_fp32.pth"


@pytest.fixture(scope="module")
def mlsd(seeded_weights) -> MLSD:
    annotator = annotators.create("mlsd", weights=str(seeded_weights.ensure((CHECKPOINT,))))
    assert isinstance(annotator, MLSD)
    return annotator


@pytest.fixture(scope="module")
def tp_map(mlsd: MLSD) -> torch.Tensor:
    with torch.inference_mode():
        return mlsd.model(mlsd.network_input([MLSD_CASE.input_rgb]))[0]


def test_defaults_are_the_reference_thresholds() -> None:
    config = annotators.create("mlsd").config
    assert (config.value_threshold, config.distance_threshold) == (0.1, 0.1)


def test_raw_tp_map_matches_reference(tp_map: torch.Tensor) -> None:
    assert_f16_close(tp_map.numpy(), MLSD_CASE.golden["raw_tpmap_f16"], "raw_tpmap_f16")
    assert_raw_close(tp_map[:5].numpy(), MLSD_CASE.golden["raw_tpmap_ch0to4_f32"], "raw_tpmap_ch0to4_f32")


def test_decoder_matches_reference_exactly() -> None:
    # The fixture's decode-only case: the reference decoder fed the stored TP map with the centre
    # logits scaled by 0.25, which makes the top-200 scores distinct and the decoding deterministic.
    golden = MLSD_CASE.golden
    tp_map = torch.from_numpy(golden["raw_tpmap_ch0to4_f32"].copy())
    tp_map[0] *= 0.25
    decoded = decode_segments(tp_map, 0.1, 0.1)
    np.testing.assert_array_equal(decoded.centres_yx, golden["decode_topk_pts_yx"])
    np.testing.assert_array_equal(decoded.scores, golden["decode_topk_scores"])
    lines = segments_to_lines(decoded.segments, 1.0, 1.0)
    np.testing.assert_array_equal(lines, golden["decode_lines_xyxy"])
    np.testing.assert_array_equal(draw_lines(lines, 512, 512), golden["decode_final_map"])


def test_annotator_map_is_its_decoded_tp_map(mlsd: MLSD, tp_map: torch.Tensor) -> None:
    # The full-run final map depends on top-k tie order (README), so it is not a pass criterion;
    # the annotator must however equal decode + draw of its own network output.
    (result,) = mlsd([MLSD_CASE.input_rgb])
    assert result.shape == (512, 512, 3) and result.dtype == np.uint8
    expected = draw_lines(segments_to_lines(decode_segments(tp_map, 0.1, 0.1).segments, 1.0, 1.0), 512, 512)
    np.testing.assert_array_equal(result[:, :, 0], expected)
    assert (result == result[:, :, :1]).all()
    assert 0 < (expected == 255).mean() < 0.5


def test_value_threshold_above_every_score_gives_a_blank_map(mlsd: MLSD, seeded_weights) -> None:
    crop = MLSD_CASE.input_rgb[:256, :256]
    assert mlsd([crop])[0].any()
    strict = annotators.create("mlsd", weights=str(seeded_weights.ensure((CHECKPOINT,))), value_threshold=1.0)
    assert not strict([crop])[0].any()


@pytest.mark.parametrize(
    ("size", "expected"), [((512, 512), (512, 512)), ((80, 120), (80, 128)), ((7, 9), (16, 16)), ((100, 200), (96, 208))]
)
def test_network_size_is_nearest_multiple_of_16(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert network_size(*size) == expected


def test_small_non_square_and_mixed_sizes(mlsd: MLSD, astronaut: np.ndarray) -> None:
    crop = astronaut[:80, :120]
    images = [crop.copy(), astronaut[100:164, 50:146].copy(), crop[::-1].copy(), astronaut[:20, :24].copy()]
    maps = mlsd(images)
    for image, result in zip(images, maps):
        assert result.shape == image.shape and result.dtype == np.uint8
        assert set(np.unique(result)) <= {0, 255}
    assert maps[0].any(), "seeded weights find lines on an 80x120 crop"
    for image, result in zip(images, maps):
        np.testing.assert_array_equal(mlsd([image])[0], result)


def test_checkpoint_with_wrong_keys_is_refused(tmp_path: Path, seeded_weights) -> None:
    state = torch.load(seeded_weights.ensure((CHECKPOINT,)) / CHECKPOINT, weights_only=True)
    del state["block23.conv3.bias"]
    torch.save(state, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match=r"missing key.*block23\.conv3\.bias"):
        annotators.create("mlsd", weights=str(tmp_path)).load()
