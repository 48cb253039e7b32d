"""The learned line-art annotators against ``shared/parity/lineart`` and ``lineart_anime``: raw
network outputs through the user's loading path, the final maps (inverted to white on black), the
exact post-processing on the stored raw outputs, and small, non-square and mixed-size inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import annotators
from annotators.lineart import LineartAnime, LineartRealistic, anime_network_size, anime_output_to_map, sketch_to_map
from tests.parity import assert_maps_agree, assert_raw_close, assert_sigmoid_close, case, write_published_checkpoint

SKETCH = case("lineart")
ANIME = case("lineart_anime")


@pytest.fixture(scope="module")
def realistic(seeded_weights) -> LineartRealistic:
    annotator = annotators.create("lineart_realistic", weights=str(seeded_weights.ensure(("sk_model.pth",))))
    assert isinstance(annotator, LineartRealistic)
    return annotator


@pytest.fixture(scope="module")
def anime(seeded_weights) -> LineartAnime:
    annotator = annotators.create("lineart_anime", weights=str(seeded_weights.ensure(("netG.pth",))))
    assert isinstance(annotator, LineartAnime)
    return annotator


def test_sketch_post_processing_is_the_reference_inverted_exactly() -> None:
    # The fixture's final map is the detector's own (dark lines on white); ControlNet gets 255 - it.
    expected = 255 - SKETCH.golden["final_map"]
    np.testing.assert_array_equal(sketch_to_map(SKETCH.golden["raw_sigmoid_line"]), expected)


def test_anime_post_processing_is_the_reference_inverted_exactly() -> None:
    expected = 255 - ANIME.golden["final_map"]
    np.testing.assert_array_equal(anime_output_to_map(ANIME.golden["raw_tanh"], 512, 512), expected)


def test_realistic_matches_reference(realistic: LineartRealistic) -> None:
    with torch.inference_mode():
        logits = realistic.model.logits(realistic.network_input([SKETCH.input_rgb]))[0, 0]
    assert_raw_close(logits.numpy(), SKETCH.golden["raw_logits_before_sigmoid"], "raw_logits_before_sigmoid")
    assert_sigmoid_close(torch.sigmoid(logits).numpy(), SKETCH.golden["raw_sigmoid_line"], "raw_sigmoid_line")
    (result,) = realistic([SKETCH.input_rgb])
    assert (result == result[:, :, :1]).all()
    assert_maps_agree(result[:, :, 0], 255 - SKETCH.golden["final_map"], name="final_map (inverted)")


def test_coarse_loads_sk_model2(tmp_path: Path, realistic: LineartRealistic) -> None:
    # Only sk_model2.pth is in the folder, so the coarse annotator must ask for that file. Its
    # seeded weights equal sk_model.pth's (same manifest and seed), hence the same map.
    write_published_checkpoint(SKETCH, tmp_path / "sk_model2.pth")
    coarse = annotators.create("lineart_coarse", weights=str(tmp_path))
    image = SKETCH.input_rgb[128:384, 64:448]
    (result,) = coarse([image])
    np.testing.assert_array_equal(result, realistic([image])[0])
    with pytest.raises(FileNotFoundError, match="sk_model.pth"):
        annotators.create("lineart_realistic", weights=str(tmp_path)).load()


def test_anime_matches_reference(anime: LineartAnime) -> None:
    with torch.inference_mode():
        pre_tanh = anime.model.logits(anime.network_input([ANIME.input_rgb]))[0, 0]
    assert_raw_close(pre_tanh.numpy(), ANIME.golden["raw_pre_tanh"], "raw_pre_tanh")
    assert_sigmoid_close(torch.tanh(pre_tanh).numpy(), ANIME.golden["raw_tanh"], "raw_tanh")
    (result,) = anime([ANIME.input_rgb])
    assert (result == result[:, :, :1]).all()
    assert_maps_agree(result[:, :, 0], 255 - ANIME.golden["final_map"], name="final_map (inverted)")


def test_anime_strips_data_parallel_prefix(tmp_path: Path, anime: LineartAnime, seeded_weights) -> None:
    plain = torch.load(seeded_weights.ensure(("netG.pth",)) / "netG.pth", weights_only=True)
    torch.save({"module." + key: value for key, value in plain.items()}, tmp_path / "netG.pth")
    wrapped = annotators.create("lineart_anime", weights=str(tmp_path)).load()
    for (name, loaded), reference in zip(wrapped.model.state_dict().items(), anime.model.state_dict().values(), strict=True):
        assert torch.equal(loaded, reference), name


@pytest.mark.parametrize(
    ("size", "expected"), [((512, 512), (512, 512)), ((80, 120), (256, 256)), ((257, 600), (512, 768))]
)
def test_anime_network_size_rounds_up_to_256(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert anime_network_size(*size) == expected


@pytest.mark.parametrize("annotator_fixture", ["realistic", "anime"])
def test_small_non_square_and_mixed_sizes(
    annotator_fixture: str, request: pytest.FixtureRequest, astronaut: np.ndarray
) -> None:
    annotator = request.getfixturevalue(annotator_fixture)
    # 37x53 and 5x6 are not multiples of 4, so the sketch generator pads and crops them.
    crop = astronaut[:80, :120]
    images = [crop.copy(), astronaut[200:264, 100:196].copy(), crop[:, ::-1].copy(), astronaut[300:337, 300:353].copy()]
    images.append(astronaut[:5, :6].copy())
    maps = annotator(images)
    for image, result in zip(images, maps):
        assert result.shape == image.shape and result.dtype == np.uint8
        assert (result == result[:, :, :1]).all()
    assert maps[0].std() > 0
    for image, result in zip(images, maps):
        np.testing.assert_array_equal(annotator([image])[0], result)


def test_sketch_padding_keeps_the_map_aligned(realistic: LineartRealistic, astronaut: np.ndarray) -> None:
    # Padding 78 -> 80 rows only adds two replicated rows: away from them the map barely moves
    # (measured mean 0.3), whereas a one-row misalignment would differ by about 45 on average.
    (full,) = realistic([astronaut[:80, :120].copy()])
    (padded,) = realistic([astronaut[:78, :120].copy()])
    difference = np.abs(full[:60].astype(int) - padded[:60].astype(int))
    assert difference.mean() < 2
