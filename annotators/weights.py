"""Declared weights, and finding and loading them.

An annotator declares its weights as data (:class:`Weights`, in the spirit of timm's pretrained
configs): the Hub repo and file names or a transformers model id, the format, the licence, and a
pure key-remap function per file. The lifecycle in :mod:`annotators.base` uses that declaration to
find, identify and load them; no annotator writes its own lookup.

Lookup order for a checkpoint file name (e.g. ``ControlNetHED.pth``):
  1. an explicit file or folder (``--weights`` / ``weights=``);
  2. the folder named by ``CN_ANNOTATE_WEIGHTS``;
  3. the Hugging Face Hub repo ``lllyasviel/Annotators`` through huggingface_hub's cache, offline
     (cache only) when ``HF_HUB_OFFLINE`` is set.
A folder matches the file itself or, recursively, any file of that name (so an sd-webui or ComfyUI
models folder works), and a ``.safetensors`` twin of a ``.pth`` file is accepted too.

A transformers model is a folder (``config.json`` beside its weights), looked up the same way: an
explicit folder, a folder named after the model under ``CN_ANNOTATE_WEIGHTS``, then the Hub cache of
its model id. ONNX graphs are files, found like checkpoints. Bundled weights ship inside a package.

Checkpoints load with ``torch.load(weights_only=True)`` or safetensors; nothing here runs pickled code.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

__all__ = [
    "HUB_REPO",
    "WeightFile",
    "Weights",
    "WeightsFormat",
    "find_model_folder",
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

    def __init__(self, filename: str, tried: list[str], repo_id: str, *, hint: str | None = None, hub_path: str | None = None) -> None:
        self.filename = filename
        self.tried = tried
        fetch = hint or f"fetch it once with `hf download {repo_id} {hub_path or filename}`"
        super().__init__(
            f"weights {filename} not found (looked in: {'; '.join(tried)}). "
            f"Pass --weights FILE_OR_DIR, set {WEIGHTS_ENV} to a folder holding it, or {fetch}."
        )

    def __str__(self) -> str:
        return str(self.args[0])


def _candidates(filename: str) -> tuple[str, ...]:
    stem, suffix = os.path.splitext(filename)
    # A safetensors twin stands in for a pickled checkpoint, never for an ONNX graph.
    return (filename,) if suffix in (".safetensors", ".onnx") else (filename, stem + ".safetensors")


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
    subfolder: str | None = None,
    local_files_only: bool | None = None,
    hint: str | None = None,
) -> Path:
    """Locate ``filename``; see the module docstring for the order. Raises :class:`WeightsNotFoundError`.

    ``weights`` may be the checkpoint file itself (any name) or a folder. ``subfolder`` is where the
    file lies inside the Hub repo (local folders are searched recursively by name anyway).
    ``local_files_only`` defaults to whether ``HF_HUB_OFFLINE`` is set; the Hub is only contacted
    when it is False.
    ``hint`` replaces the error's ``hf download`` advice (for files published elsewhere).
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
        return Path(hf_hub_download(repo_id, filename, subfolder=subfolder, local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        where = "Hugging Face cache" if offline else "Hugging Face Hub"
        tried.append(f"{where} {repo_id} ({type(err).__name__})")
    raise WeightsNotFoundError(filename, tried, repo_id, hint=hint, hub_path=f"{subfolder}/{filename}" if subfolder else None)


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
    part of each annotator's key-remap function. A file that does not load raises ``ValueError``
    with one line naming it; a pickle holding anything but tensors is refused, and the message never
    suggests loading it unsafely.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError (a damaged header), OSError, torch's dtype errors
            raise ValueError(f"{path.name}: cannot load checkpoint (not a valid safetensors file: {_one_line(err)})") from None
    import pickle

    import torch

    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it does not write: not the user's concern
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"WeightsUnpickler error:(.*?)(?:Please use|Check the documentation|$)", text, re.DOTALL)
        detail = " ".join(found.group(1).split()) if found else _one_line(err)
        if "Unsupported global" not in text:  # not a refusal of code: a damaged file, or not a checkpoint
            raise ValueError(f"{path.name}: cannot load checkpoint (damaged, or not a PyTorch checkpoint: {detail or 'UnpicklingError'})") from None
        raise ValueError(
            f"{path.name}: cannot load checkpoint: it holds Python objects, not only tensors ({detail}), which are never unpickled; "
            "convert it to safetensors where it was made"
        ) from None
    except Exception as err:  # torch raises several types for damaged files
        raise ValueError(f"{path.name}: cannot load checkpoint ({type(err).__name__}: {_one_line(err)})") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(err: BaseException) -> str:
    """The first line of an error, without terminal colours or advice to load a file unsafely."""
    text = _ANSI.sub("", str(err)).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    sentences = [s for s in re.split(r"(?<=\.) ", text) if "weights_only" not in s]
    return " ".join(sentences)[:300] or type(err).__name__


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


WeightsFormat = Literal["state_dict", "safetensors", "transformers", "onnx", "bundled"]
Remap = Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class WeightFile:
    """One published file and the pure function that renames its keys to the module's: a callable,
    or ``"module:function"`` imported when the weights load (so that declaring it imports no torch).
    None keeps the keys as published. ``subfolder``: the file's folder inside the Hub repo, if any."""

    name: str
    remap: Remap | str | None = None
    subfolder: str | None = None

    def remap_function(self) -> Remap:
        if self.remap is None:
            return dict
        if callable(self.remap):
            return self.remap
        module_name, _, attr = self.remap.partition(":")
        return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class Weights:
    """Where an annotator's weights come from, declared as data on its class.

    ``files`` are file names in ``repo_id`` (state dicts, safetensors or ONNX graphs); a
    ``transformers`` model is instead the folder of ``model_id``; ``bundled`` weights ship in
    ``package``. ``license`` is shown by ``cn-annotate list`` and in dataset cards. ``fetch_hint``
    replaces the missing-weights error's ``hf download`` advice where the files are not in a Hub
    model repo (e.g. a Space).
    """

    license: str
    files: tuple[WeightFile, ...] = ()
    format: WeightsFormat = "state_dict"
    repo_id: str = HUB_REPO
    model_id: str | None = None
    package: str | None = None
    fetch_hint: str | None = None

    def __post_init__(self) -> None:
        if self.format == "transformers" and not self.model_id:
            raise ValueError("transformers weights need a model_id")
        if self.format == "bundled" and not self.package:
            raise ValueError("bundled weights need the package that carries them")
        if self.format in ("state_dict", "safetensors", "onnx") and not self.files:
            raise ValueError(f"{self.format} weights need at least one file")

    @property
    def downloadable(self) -> bool:
        """Whether the user must provide or download the weights (bundled ones come with a package)."""
        return self.format != "bundled"

    def locate(self, weights: str | os.PathLike[str] | None = None, *, local_files_only: bool | None = None) -> list[Path]:
        """The path of each file (or the model folder, or the package folder), in declaration order;
        raises :class:`WeightsNotFoundError` with the lookup's explanation."""
        if self.format == "transformers":
            assert self.model_id is not None
            return [find_model_folder(self.model_id, weights, local_files_only=local_files_only)]
        if self.format == "bundled":
            assert self.package is not None
            spec = importlib.util.find_spec(self.package)
            if spec is None or not spec.submodule_search_locations:
                raise WeightsNotFoundError(self.package, ["installed packages"], "", hint=f"install the package that carries them: pip install {self.package}")
            return [Path(next(iter(spec.submodule_search_locations)))]
        return [
            find_checkpoint(f.name, weights, repo_id=self.repo_id, subfolder=f.subfolder, local_files_only=local_files_only, hint=self.fetch_hint)
            for f in self.files
        ]

    def present(self, weights: str | os.PathLike[str] | None = None) -> bool:
        """Whether every file can be found without touching the network."""
        try:
            self.locate(weights, local_files_only=True)
        except WeightsNotFoundError:
            return False
        return True

    def identity(self, paths: list[Path]) -> list[dict[str, Any]]:
        """Names and sizes of the files found: what a dataset build records, so that resuming with
        other weights is refused. No local path is part of it."""
        found = []
        for path in paths:
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            found.append({"name": path.name, "bytes": sum(p.stat().st_size for p in files)})
        return found

    def load_into(self, module: torch.nn.Module, path: Path, index: int = 0) -> torch.nn.Module:
        """Read the ``index``-th declared file from ``path`` and load it strictly through its remap."""
        return load_strict(module, load_checkpoint(path), self.files[index].remap_function(), source=path.name)


def find_model_folder(
    model_id: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    local_files_only: bool | None = None,
) -> Path:
    """A transformers model folder: ``weights`` (the folder itself, or one holding a folder named
    after the model), ``$CN_ANNOTATE_WEIGHTS`` likewise, then the Hub cache (or the Hub) of ``model_id``."""
    leaf = model_id.rsplit("/", 1)[-1]
    tried: list[str] = []
    for label, root in (("weights", weights), (f"${WEIGHTS_ENV}", os.environ.get(WEIGHTS_ENV))):
        if not root:
            continue
        folder = Path(root).expanduser()
        for candidate in (folder, folder / leaf, folder / model_id):
            if (candidate / "config.json").is_file():
                return candidate
        tried.append(f"{label}={folder.name}")
    offline = _hub_offline() if local_files_only is None else local_files_only
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        tried.append(f"{'Hugging Face cache' if offline else 'Hugging Face Hub'} {model_id} ({type(err).__name__})")
    raise WeightsNotFoundError(model_id, tried, model_id, hint=f"fetch it once with `hf download {model_id}`")
