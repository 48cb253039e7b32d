"""Checkpoint lookup order, safe loading and strict key checks in annotators.weights."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from annotators.weights import (
    WEIGHTS_ENV,
    WeightsNotFoundError,
    find_checkpoint,
    is_checkpoint_present,
    load_checkpoint,
    load_strict,
)

NAME = "ControlNetHED.pth"


@pytest.fixture(autouse=True)
def isolated_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache and no weights folder, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import, so patch the constant
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return cache


def _write(path: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors or {"w": torch.ones(2)}, path)
    return path


def test_explicit_file_then_folder_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = _write(tmp_path / "mine" / "renamed.pth")
    assert find_checkpoint(NAME, explicit) == explicit  # a file is taken whatever its name
    nested = _write(tmp_path / "webui" / "annotator" / "downloads" / "hed" / NAME)
    assert find_checkpoint(NAME, tmp_path / "webui") == nested  # folders are searched recursively
    env_copy = _write(tmp_path / "env" / NAME)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "env"))
    assert find_checkpoint(NAME) == env_copy
    assert find_checkpoint(NAME, tmp_path / "webui") == nested  # the explicit folder wins over the env


def test_safetensors_twin_is_accepted(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.arange(3.0)}, str(tmp_path / "ControlNetHED.safetensors"))
    found = find_checkpoint(NAME, tmp_path)
    assert found.suffix == ".safetensors"
    assert torch.equal(load_checkpoint(found)["w"], torch.arange(3.0))


def test_hub_cache_is_used_offline(isolated_hub_cache: Path) -> None:
    snapshot = isolated_hub_cache / "models--lllyasviel--Annotators" / "snapshots" / ("a" * 40)
    cached = _write(snapshot / NAME)
    refs = isolated_hub_cache / "models--lllyasviel--Annotators" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    assert find_checkpoint(NAME).resolve() == cached.resolve()
    assert is_checkpoint_present(NAME)


def test_missing_weights_error_names_file_places_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(WeightsNotFoundError) as err:
        find_checkpoint(NAME, tmp_path / "empty")
    message = str(err.value)
    assert NAME in message and str(tmp_path / "empty") in message and WEIGHTS_ENV in message
    assert "Hugging Face cache" in message and "--weights" in message
    assert f"`hf download lllyasviel/Annotators {NAME}`" in message
    assert "\n" not in message
    assert not is_checkpoint_present(NAME)


def test_pickled_code_is_refused(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(path)
    assert [str(w.message) for w in recwarn] == []  # refused in one line, with no warning from torch


def test_load_strict_reports_missing_unexpected_and_shape(tmp_path: Path) -> None:
    module = torch.nn.Linear(3, 2)
    good = {"weight": torch.zeros(2, 3), "bias": torch.ones(2)}
    load_strict(module, good, dict)
    assert torch.equal(module.bias, torch.ones(2))
    with pytest.raises(ValueError, match=r"1 missing key\(s\): bias; 1 unexpected key\(s\): extra"):
        load_strict(module, {"weight": torch.zeros(2, 3), "extra": torch.ones(1)}, dict, source="x.pth")
    with pytest.raises(ValueError, match="x.pth: does not match Linear"):
        load_strict(module, {"weight": torch.zeros(5, 3), "bias": torch.ones(2)}, dict, source="x.pth")


def test_suggested_download_command_is_installed() -> None:
    """The hint names `hf` (huggingface_hub 1.x/2.x ships no `huggingface-cli`); it must exist here."""
    import shutil
    import sys

    scripts = Path(sys.executable).parent
    assert shutil.which("hf", path=f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}") is not None


def test_subfolder_is_part_of_the_hub_path_only(tmp_path: Path, isolated_hub_cache: Path) -> None:
    """A file kept in a folder of its Hub repo (TEED's ``Annotators/7_model.pth``) is found by its
    name in local folders, under the folder in the Hub cache, and the hint names the full path."""
    nested = _write(tmp_path / "webui" / "models" / "TEED" / "7_model.pth")
    assert find_checkpoint("7_model.pth", tmp_path / "webui", repo_id="owner/repo", subfolder="Annotators") == nested
    snapshot = isolated_hub_cache / "models--owner--repo" / "snapshots" / ("b" * 40)
    cached = _write(snapshot / "Annotators" / "7_model.pth")
    (isolated_hub_cache / "models--owner--repo" / "refs").mkdir(parents=True)
    (isolated_hub_cache / "models--owner--repo" / "refs" / "main").write_text("b" * 40)
    assert find_checkpoint("7_model.pth", repo_id="owner/repo", subfolder="Annotators").resolve() == cached.resolve()
    with pytest.raises(WeightsNotFoundError) as err:
        find_checkpoint("7_model.pth", tmp_path / "empty", repo_id="other/repo", subfolder="Annotators")
    assert "`hf download other/repo Annotators/7_model.pth`" in str(err.value)


def test_an_onnx_graph_has_no_safetensors_twin(tmp_path: Path) -> None:
    _write(tmp_path / "yolox_l.safetensors")
    with pytest.raises(WeightsNotFoundError):
        find_checkpoint("yolox_l.onnx", tmp_path)
