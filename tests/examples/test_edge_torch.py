"""The torch example annotator: its map against the filter written out with scipy, its remap and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.ndimage import correlate

from annotators.weights import WeightsNotFoundError
from examples.annotators.edge_torch import EdgeTorch, edge_image, remap_edgenet

LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A published-layout file: a Laplacian of the channels' mean, under DataParallel's ``module.`` keys."""
    kernel = np.stack([LAPLACIAN / 3.0] * 3)[None]  # 1 x 3 x 3 x 3
    save_file({"module.conv.weight": torch.from_numpy(kernel * 8.0), "module.conv.bias": torch.tensor([-1.0])}, tmp_path / "edgenet.safetensors")
    return tmp_path


def test_map_is_the_sigmoid_of_the_filter(weights: Path, astronaut: np.ndarray) -> None:
    image = astronaut[100:180, 150:250].copy()
    (result,) = EdgeTorch(weights=str(weights))([image])
    mean = image.astype(np.float32).mean(axis=2) / 255.0
    response = correlate(mean, LAPLACIAN * 8.0, mode="constant", cval=0.0) - 1.0
    expected = edge_image(1.0 / (1.0 + np.exp(-response)), 1.0)
    assert result.shape == (80, 100, 3)
    assert np.abs(result[:, :, 0].astype(int) - expected).max() <= 1


def test_remap_strips_the_dataparallel_prefix() -> None:
    assert list(remap_edgenet({"module.conv.weight": 1, "conv.bias": 2})) == ["conv.weight", "conv.bias"]


def test_wrong_file_and_missing_file_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_file({"module.other.weight": torch.zeros(1)}, tmp_path / "edgenet.safetensors")
    with pytest.raises(ValueError, match=r"edgenet\.safetensors: does not match .*missing"):
        EdgeTorch(weights=str(tmp_path)).load()
    monkeypatch.delenv("CN_ANNOTATE_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError, match="hf download example/edgenet edgenet.safetensors") as err:
        EdgeTorch(weights=str(tmp_path / "nowhere")).load()
    assert "\n" not in str(err.value)
