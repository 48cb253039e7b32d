"""Finding and loading annotator checkpoints.

Lookup order for a checkpoint file name (e.g. ``ControlNetHED.pth``):
  1. an explicit file or folder (``--weights`` / ``weights=``);
  2. the folder named by ``CN_ANNOTATE_WEIGHTS``;
  3. the Hugging Face Hub repo ``lllyasviel/Annotators`` through huggingface_hub's cache, offline
     (cache only) when ``HF_HUB_OFFLINE`` is set.
A folder matches the file itself or, recursively, any file of that name (so an sd-webui or ComfyUI
models folder works), and a ``.safetensors`` twin of a ``.pth`` file is accepted too.

Checkpoints load with ``torch.load(weights_only=True)`` or safetensors; nothing here runs pickled code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "HUB_REPO",
    "WEIGHTS_ENV",
    "WeightsNotFoundError",
    "find_checkpoint",
    "is_checkpoint_present",
    "load_checkpoint",
    "load_strict",
]

HUB_REPO = "lllyasviel/Annotators"
WEIGHTS_ENV = "CN_ANNOTATE_WEIGHTS"


class WeightsNotFoundError(FileNotFoundError):
    """A checkpoint was not found anywhere it may be; the message says where it looked and what to do."""

    def __init__(self, filename: str, tried: list[str], repo_id: str) -> None:
        self.filename = filename
        self.tried = tried
        super().__init__(
            f"checkpoint {filename} not found (looked in: {'; '.join(tried)}). "
            f"Pass --weights FILE_OR_DIR, set {WEIGHTS_ENV} to a folder holding it, "
            f"or fetch it once with `huggingface-cli download {repo_id} {filename}`."
        )

    def __str__(self) -> str:
        return str(self.args[0])


def _candidates(filename: str) -> tuple[str, ...]:
    stem, suffix = os.path.splitext(filename)
    return (filename,) if suffix == ".safetensors" else (filename, stem + ".safetensors")


def _search_folder(folder: Path, filename: str) -> Path | None:
    for name in _candidates(filename):
        direct = folder / name
        if direct.is_file():
            return direct
    for name in _candidates(filename):
        nested = next((p for p in sorted(folder.rglob(name)) if p.is_file()), None)
        if nested is not None:
            return nested
    return None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def find_checkpoint(
    filename: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    repo_id: str = HUB_REPO,
    local_files_only: bool | None = None,
) -> Path:
    """Locate ``filename``; see the module docstring for the order. Raises :class:`WeightsNotFoundError`.

    ``weights`` may be the checkpoint file itself (any name) or a folder. ``local_files_only``
    defaults to whether ``HF_HUB_OFFLINE`` is set; the Hub is only contacted when it is False.
    """
    tried: list[str] = []
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            found = _search_folder(path, filename)
            if found:
                return found
        tried.append(str(path))
    env_folder = os.environ.get(WEIGHTS_ENV)
    if env_folder:
        found = _search_folder(Path(env_folder).expanduser(), filename) if Path(env_folder).is_dir() else None
        if found:
            return found
        tried.append(f"${WEIGHTS_ENV}={env_folder}")
    offline = _hub_offline() if local_files_only is None else local_files_only
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        where = "Hugging Face cache" if offline else "Hugging Face Hub"
        tried.append(f"{where} {repo_id} ({type(err).__name__})")
    raise WeightsNotFoundError(filename, tried, repo_id)


def is_checkpoint_present(filename: str, weights: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``filename`` can be found without touching the network."""
    try:
        find_checkpoint(filename, weights, local_files_only=True)
    except WeightsNotFoundError:
        return False
    return True


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a flat ``{key: tensor}`` dict; pickles load with ``weights_only=True``.

    Wrappers used by the published files (``state_dict``, ``model``) are not unwrapped here; that is
    part of each annotator's key-remap function.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe pickles
        raise ValueError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from None


def load_strict(
    module: torch.nn.Module,
    checkpoint: Mapping[str, object],
    remap: Callable[[Mapping[str, object]], dict[str, torch.Tensor]],
    *,
    source: str = "checkpoint",
) -> torch.nn.Module:
    """Load ``remap(checkpoint)`` into ``module`` strictly, with a one-line error on any key mismatch."""
    state_dict = remap(checkpoint)
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when strict=False
        first = str(err).strip().splitlines()[-1].strip()
        raise ValueError(f"{source}: does not match {type(module).__name__}: {first}") from None
    problems = _describe_mismatch("missing", result.missing_keys) + _describe_mismatch("unexpected", result.unexpected_keys)
    if problems:
        raise ValueError(f"{source}: does not match {type(module).__name__}: {'; '.join(problems)}")
    return module


def _describe_mismatch(kind: str, keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    if not keys:
        return []
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return [f"{len(keys)} {kind} key(s): {shown}"]
