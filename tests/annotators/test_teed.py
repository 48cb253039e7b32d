"""TEED (``softedge_teed``) on seeded weights in the published layout: the strict load through the remap,
the network's shapes, and hand-checked properties of sd-webui's post-processing. There is no parity
fixture for TEED."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import annotators
from annotators.nets.teed import TEED, remap_teed_checkpoint, smish
from annotators.teed import SoftEdgeTEED, teed_map
from annotators.weights import (
    WeightsNotFoundError,
    load_checkpoint,
    load_strict,
)
from tests.parity import TEED_CHECKPOINT_KEYS

FILE = "7_model.pth"


@pytest.fixture(scope="module")
def checkpoint(seeded_weights) -> Path:
    return seeded_weights.ensure((FILE,)) / FILE


def test_published_layout_loads_strictly_through_the_remap(checkpoint: Path) -> None:
    published = load_checkpoint(checkpoint)
    assert [(k, tuple(v.shape)) for k, v in published.items()] == list(TEED_CHECKPOINT_KEYS)
    model = load_strict(TEED(), published, remap_teed_checkpoint, source=FILE)
    renamed = remap_teed_checkpoint(published)
    assert len(renamed) == len(published) == 36 and not set(renamed) & set(published)
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in renamed.items())
    assert sum(p.numel() for p in model.parameters()) == 58_910  # the paper's "58K"
    assert renamed.keys() >= {"up3.levels.1.project.weight", "up3.levels.1.upsample.weight", "fusion.depthwise2.bias"}


def test_a_foreign_checkpoint_is_refused_naming_its_keys(checkpoint: Path, tmp_path: Path) -> None:
    wrapped = {"module." + k: v for k, v in load_checkpoint(checkpoint).items()}
    torch.save(wrapped, tmp_path / FILE)
    with pytest.raises(ValueError, match=r"7_model\.pth: does not match TEED: 36 missing key\(s\).*36 unexpected key\(s\): module\.block_1"):
        annotators.create("softedge_teed", weights=str(tmp_path / FILE)).load()


def test_four_maps_at_the_input_size(checkpoint: Path) -> None:
    model = load_strict(TEED(), load_checkpoint(checkpoint), remap_teed_checkpoint).eval()
    with torch.inference_mode():
        outputs = model(torch.rand(2, 3, 64, 96) * 255)
    assert [tuple(o.shape) for o in outputs] == [(2, 1, 64, 96)] * 4
    x = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(smish(x), x * torch.tanh(torch.log1p(torch.sigmoid(x))))


def test_maps_are_deterministic_single_channel_uint8(checkpoint: Path, photos: list[np.ndarray]) -> None:
    images = [photos[1], np.ascontiguousarray(photos[0][5:200, 7:300])]
    first = annotators.create("softedge_teed", weights=str(checkpoint)).annotate(images, single_channel=True)
    again = annotators.create("softedge_teed", weights=str(checkpoint)).annotate(images[::-1], single_channel=True)[::-1]
    for image, result, repeat in zip(images, first, again):
        assert result.map.shape == image.shape[:2] and result.map.dtype == np.uint8
        np.testing.assert_array_equal(result.map, repeat.map)
        assert set(np.unique(result.map)) <= {0, 127, 255}  # safe_steps=2: probabilities in thirds
        assert (result.map == 0).any() and (result.map > 0).any()


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_safe_steps_give_at_most_steps_plus_one_levels(checkpoint: Path, photos: list[np.ndarray], steps: int) -> None:
    (edges,) = annotators.create("softedge_teed", weights=str(checkpoint), safe_steps=steps).annotate([photos[2]], single_channel=True)
    assert set(np.unique(edges.map)) <= {int(255 * level / steps) for level in range(steps + 1)}
    (soft,) = annotators.create("softedge_teed", weights=str(checkpoint), safe_steps=0).annotate([photos[2]], single_channel=True)
    assert len(np.unique(soft.map)) > 50


def test_post_processing_by_hand() -> None:
    probability = np.array([0.5, 0.8808, 0.2689, 0.0, 1.0, 0.34, 0.67])
    # steps 2: floor(3p) / 2, times 255, truncated: thirds of [0, 1] become 0, 127 and 255.
    assert teed_map(probability, 2).tolist() == [127, 255, 0, 0, 255, 127, 255]
    assert teed_map(probability, 0).tolist() == [127, 224, 68, 0, 255, 86, 170]


class _ConstantMaps(nn.Module):
    """Stands in for TEED: four maps of logits 0, 1, 2 and 3, recording the input it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.seen.append(x.clone())
        return [torch.full((x.shape[0], 1, *x.shape[2:]), float(v)) for v in range(4)]


def test_maps_are_averaged_then_squashed_and_the_padding_cropped(photos: list[np.ndarray]) -> None:
    """Mean logit 1.5: sigmoid 0.8176 gives 208 plain and 255 with safe steps 2. The input is padded
    to multiples of 64 by repeating the edges, as raw 0..255 RGB."""
    image = np.ascontiguousarray(photos[0][:70, :100])
    for steps, expected in ((0, 208), (2, 255)):
        annotator = SoftEdgeTEED(safe_steps=steps)
        fake = _ConstantMaps()
        annotator._model = fake
        (edges,) = annotator.annotate([image], single_channel=True)
        assert edges.map.shape == (70, 100) and (edges.map == expected).all()
    (seen,) = fake.seen
    assert tuple(seen.shape) == (1, 3, 128, 128)
    rgb = seen[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(rgb[:70, :100], image)
    np.testing.assert_array_equal(rgb[127, :100], image[69])
    np.testing.assert_array_equal(rgb[:70, 127], image[:, 99])


def test_missing_weights_is_one_line_naming_the_hub_path(no_weights: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        annotators.create("softedge_teed")([np.zeros((64, 64, 3), np.uint8)])
    message = str(err.value)
    assert "\n" not in message and "7_model.pth not found" in message
    assert "`hf download bdsqlsz/qinglong_controlnet-lllite Annotators/7_model.pth`" in message
