"""PiDiNet (``softedge_pidinet``, ``softedge_pidisafe``, ``scribble_pidinet``) against the parity
case ``pidinet``, plus the pixel-difference conversions and small, mixed-size batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import annotators
from annotators.image import hwc3
from annotators.nets.pidinet import convert_pdc_weight, pdc_conv, pidinet_state_dict
from annotators.ops import scribble_from_soft_edges
from tests.annotators.test_hed import assert_batch_matches_one_by_one, small_batch
from tests.parity import assert_f16_close, assert_maps_agree, assert_sigmoid_close, case, write_published_checkpoint

PIDI = case("pidinet")
PIDI_IDS = ["softedge_pidinet", "softedge_pidisafe", "scribble_pidinet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded weights in the published training-checkpoint form ``{'state_dict': {'module.' + key}}``."""
    path = write_published_checkpoint(PIDI, tmp_path_factory.mktemp("pidinet") / "table5_pidinet.pth")
    state = torch.load(path, weights_only=True)
    assert list(state) == ["state_dict"] and all(k.startswith("module.") for k in state["state_dict"])
    return path


def test_side_and_fused_outputs_match_reference(checkpoint: Path) -> None:
    annotator = annotators.create("softedge_pidinet", weights=str(checkpoint))
    bgr = (torch.from_numpy(PIDI.input_rgb[:, :, ::-1].copy()).float() / 255.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        outputs = annotator.model(bgr)
    assert len(outputs) == 5
    for index, side in enumerate(outputs[:4], start=1):
        name = f"raw_side{index}_sigmoid_f16"
        assert_f16_close(side[0, 0].numpy(), PIDI.golden[name], name)
    assert_sigmoid_close(outputs[4][0, 0].numpy(), PIDI.golden["raw_fused_sigmoid"], "raw_fused_sigmoid")


@pytest.mark.parametrize(("name", "golden"), [("softedge_pidinet", "final_map"), ("softedge_pidisafe", "final_map_safe")])
def test_maps_match_reference(checkpoint: Path, name: str, golden: str) -> None:
    (edge_map,) = annotators.create(name, weights=str(checkpoint))([PIDI.input_rgb])
    assert_maps_agree(edge_map, hwc3(PIDI.golden[golden]), name=golden)


def test_scribble_matches_reference_post_processing(checkpoint: Path) -> None:
    """v1.1 ``gradio_scribble`` with PiDiNet: the plain (not safe) map, thinned, blurred and
    binarised (that post-processing is checked against the reference in test_hed)."""
    (scribble,) = annotators.create("scribble_pidinet", weights=str(checkpoint))([PIDI.input_rgb])
    expected = scribble_from_soft_edges(PIDI.golden["final_map"])
    assert set(np.unique(scribble)) <= {0, 255}
    assert 0.01 < (expected == 255).mean() < 0.99
    assert_maps_agree(scribble, hwc3(expected), name="scribble_pidinet")


# Row-major 3x3 taps 0..8 as positions in a 5x5 neighbourhood (centre 12), and the 3x3 ring clockwise.
NEAR = (6, 7, 8, 11, 12, 13, 16, 17, 18)
RING_CLOCKWISE = (0, 1, 2, 5, 8, 7, 6, 3)
# Radial rays, in row-major order of direction (NW, N, NE, W, E, SW, S, SE): (outer, inner) 5x5 positions.
RAYS = ((0, 6), (2, 7), (4, 8), (10, 11), (14, 13), (20, 16), (22, 17), (24, 18))


def pixel_differences(x: torch.Tensor, pdc: str) -> torch.Tensor:
    """(N, C, 9, H, W): for each 3x3 weight tap, the pixel difference it multiplies, written from
    the definitions (float64)."""
    n, c, h, w = x.shape
    patch = F.unfold(x, 5, padding=2).view(n, c, 25, h, w)
    diffs = torch.zeros(n, c, 9, h, w, dtype=x.dtype)
    if pdc == "cd":  # central: each neighbour minus the centre
        for tap in range(9):
            diffs[:, :, tap] = patch[:, :, NEAR[tap]] - patch[:, :, 12]
    elif pdc == "ad":  # angular: each ring pixel minus the next one clockwise; the centre tap unused
        for i, tap in enumerate(RING_CLOCKWISE):
            following = RING_CLOCKWISE[(i + 1) % 8]
            diffs[:, :, tap] = patch[:, :, NEAR[tap]] - patch[:, :, NEAR[following]]
    else:  # radial: outer minus inner pixel along 8 rays, weighted (reference quirk) by taps 1..8
        for ray, (outer, inner) in enumerate(RAYS):
            diffs[:, :, ray + 1] = patch[:, :, outer] - patch[:, :, inner]
    return diffs


@pytest.mark.parametrize("pdc", ["cd", "ad", "rd"])
def test_pdc_layers_compute_pixel_differences(pdc: str) -> None:
    """The network's layer for each pixel-difference type (with its load-time conversion) equals the
    weighted sum of the pixel differences."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 11, 13, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, 1, 3, 3, generator=generator, dtype=torch.float64)
    layer = pdc_conv(pdc, 5, 5, groups=5).double()
    layer.weight.data = convert_pdc_weight(pdc, weight)
    expected = (weight.view(1, 5, 9, 1, 1) * pixel_differences(x, pdc)).sum(dim=2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_checkpoint_without_container_or_prefix_loads_too(checkpoint: Path) -> None:
    """A bare state dict (e.g. a safetensors conversion) maps to the same weights."""
    published = torch.load(checkpoint, weights_only=True)
    bare = {k.removeprefix("module."): v for k, v in published["state_dict"].items()}
    from_published = pidinet_state_dict(published)
    from_bare = pidinet_state_dict(bare)
    assert list(from_published) == list(from_bare)
    assert all(torch.equal(from_published[k], from_bare[k]) for k in from_published)
    assert from_published["stages.0.1.depthwise.weight"].shape == (60, 1, 5, 5)  # block1_2 is rd


@pytest.mark.parametrize("name", PIDI_IDS)
def test_mixed_size_batch_matches_one_by_one(seeded_weights, name: str) -> None:
    folder = seeded_weights.location(annotators.get_class(name).weights)
    assert_batch_matches_one_by_one(annotators.create(name, weights=str(folder), batch_size=2), small_batch())


def test_too_small_image_is_refused(seeded_weights) -> None:
    folder = seeded_weights.ensure(("table5_pidinet.pth",))
    with pytest.raises(ValueError, match="at least 8x8 pixels, got 7x30"):
        annotators.create("softedge_pidinet", weights=str(folder))([np.zeros((30, 7, 3), np.uint8)])
    (edge_map,) = annotators.create("softedge_pidinet", weights=str(folder))([np.zeros((8, 9, 3), np.uint8)])
    assert edge_map.shape == (8, 9, 3)
