import os

# Tests never reach the Hub, and torch is erratic with 2 threads on the CI machines.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest


@pytest.fixture
def no_weights(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """No weights anywhere an annotator looks: an empty Hub cache, offline, and no
    $CN_ANNOTATE_WEIGHTS. Returns the test's ``tmp_path``."""
    from huggingface_hub import constants

    from annotators.weights import WEIGHTS_ENV

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Real photographs bundled with scikit-image, as HxWx3 uint8 RGB, of varied sizes."""
    from skimage import data

    from annotators.image import hwc3

    return [hwc3(data.astronaut()), hwc3(data.coffee()), hwc3(data.chelsea()), hwc3(data.camera())[:300, :400].copy()]


@pytest.fixture(scope="session")
def seeded_weights(tmp_path_factory: pytest.TempPathFactory):
    """Seeded stand-ins for the published checkpoints, in one folder, written on first use."""
    from tests.parity import SeededWeights

    return SeededWeights(tmp_path_factory.mktemp("seeded-weights"))


@pytest.fixture
def registered():
    """Registers annotators through the public API for one test, then removes them."""
    import annotators

    added: list[str] = []

    def register(name: str, annotator: type | str) -> None:
        annotators.register(name, annotator)
        added.append(name)

    yield register
    for name in added:
        annotators.unregister(name)
