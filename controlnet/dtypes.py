"""Dtype names (as options spell them; the names themselves are the annotators', one list for all)
to torch dtypes, and the keyword that passes a dtype to ``from_pretrained`` under the installed
diffusers and transformers."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from annotators.neural import DTYPE_NAMES

__all__ = ["DTYPE_NAMES", "MIXED_PRECISION", "cast", "dtype_keyword", "torch_dtype"]

#: accelerate's ``--mixed-precision`` names -> the dtype of the frozen models
MIXED_PRECISION = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}

# The first releases that take ``dtype`` and warn on ``torch_dtype``.
_DTYPE_KEYWORD_SINCE = {"diffusers": (0, 40), "transformers": (4, 56)}


def torch_dtype(name: str) -> Any:
    """``torch.float16`` for ``"float16"`` (or accelerate's ``"fp16"``)."""
    import torch

    name = MIXED_PRECISION.get(name, name)
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}: one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def _release(library: str) -> tuple[int, int]:
    major, minor = version(library).split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def dtype_keyword(dtype: Any, library: str = "diffusers") -> dict[str, Any]:
    """``{"dtype": dtype}`` where ``library`` takes it, else the older ``{"torch_dtype": dtype}``.
    diffusers pipelines pass it on to their transformers parts themselves."""
    key = "dtype" if _release(library) >= _DTYPE_KEYWORD_SINCE[library] else "torch_dtype"
    return {key: dtype}


def cast(model: Any, dtype: Any) -> Any:
    """``model`` with its floating-point weights in ``dtype``, in place. Through ``float()``,
    ``half()`` and ``bfloat16()`` rather than ``to(dtype)``, which in diffusers warns on every call,
    whether or not the model has modules to keep in float32 (ours have none)."""
    import torch

    casts = {torch.float32: model.float, torch.float16: model.half, torch.bfloat16: model.bfloat16}
    return casts[dtype]()
