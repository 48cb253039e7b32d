"""Shared machinery of the torch annotators: runtime config, lazy weight loading, batching by shape.

A neural annotator declares its ``weights`` (:class:`annotators.weights.Weights`), builds its
network in ``_build`` from the paths the lookup found, and runs batches in ``_forward``.
Weights load on first call (or an explicit ``load()``), never in the constructor, so creating an
annotator never touches the disk or the network.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from annotators.base import Annotation, Annotator, AnnotatorConfig, param
from annotators.weights import Weights

if TYPE_CHECKING:
    from typing import Self

    import torch

__all__ = ["DTYPE_NAMES", "NeuralAnnotator", "NeuralConfig", "batches_by_shape", "pad_to_multiple"]

#: the dtype names every ``dtype`` option takes (annotators, cn-sample), each a ``torch`` attribute
DTYPE_NAMES = ("float32", "float16", "bfloat16")

_DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class NeuralConfig(AnnotatorConfig):
    """Runtime options shared by every neural annotator; they do not change the maps' meaning
    (``runtime`` fields are left out of a dataset build's identity)."""

    weights: str | None = param(None, "checkpoint file or folder (default: $CN_ANNOTATE_WEIGHTS, then the Hub cache)", runtime=True)
    device: str = param("cpu", "torch device: cpu, cuda, cuda:N or mps", runtime=True)
    dtype: str = param("float32", "compute dtype; half precision needs a GPU", choices=DTYPE_NAMES, runtime=True)
    batch_size: int = param(8, "images per forward pass", ge=1, runtime=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _DEVICE_PATTERN.match(self.device):
            raise ValueError(f"{type(self).__name__}.device={self.device!r} is invalid: must be cpu, cuda, cuda:N or mps")
        if self.device == "cpu" and self.dtype != "float32":
            raise ValueError(f"{type(self).__name__}.dtype={self.dtype!r} is invalid on cpu: must be 'float32'")


def batches_by_shape(images: Sequence[np.ndarray], batch_size: int) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Group images of equal shape into batches of at most ``batch_size``, yielding their indices so
    results can be put back in input order. Mixed sizes thus never need padding."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        groups[image.shape].append(index)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield chunk, [images[i] for i in chunk]


def pad_to_multiple(x: torch.Tensor, multiple: int, min_side: int = 1) -> torch.Tensor:
    """Pad an NCHW tensor at the bottom and right, repeating the edge pixels, so that each side is a
    multiple of ``multiple`` (and at least ``min_side``): networks that the reference runs only at
    such sizes then take any image, and the caller crops the output back."""
    import torch.nn.functional as F

    height, width = x.shape[-2:]
    pad_bottom = max(min_side, -(-height // multiple) * multiple) - height
    pad_right = max(min_side, -(-width // multiple) * multiple) - width
    if pad_bottom or pad_right:
        x = F.pad(x, (0, pad_right, 0, pad_bottom), mode="replicate")
    return x


class NeuralAnnotator(Annotator):
    """Base of annotators that run a torch network. Subclasses declare ``weights`` and implement
    ``_build`` (the network from the located weights, strict load) and ``_forward`` (a same-shape
    batch to maps, or to :class:`Annotation` results when they have a ``data_kind``)."""

    Config: ClassVar[type[NeuralConfig]] = NeuralConfig
    weights: ClassVar[Weights]

    config: NeuralConfig

    def __init__(self, config: NeuralConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)  # type: ignore[arg-type]
        self._model: torch.nn.Module | None = None

    @property
    def preferred_batch_size(self) -> int:
        return self.forward_batch_size

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.config.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.config.dtype)

    def load(self) -> Self:
        """Find, read and strictly load the weights now (otherwise done on first call)."""
        if self._model is None:
            model = self._build(self.locate_weights())
            self._model = model.eval().requires_grad_(False).to(self.torch_device, self.torch_dtype)
        return self

    def close(self) -> None:
        self._model = None

    @property
    def model(self) -> torch.nn.Module:
        self.load()
        assert self._model is not None
        return self._model

    @property
    def forward_batch_size(self) -> int:
        """Images per forward pass: ``batch_size`` on accelerators, 1 on the CPU.

        On the CPU, oneDNN picks convolution kernels by batch size and some round differently, so a
        map would depend on its batch mates; image by image it is bit-reproducible, and measured no
        slower there (see bench/neural.py). Accelerators get whole batches, which is where they pay.
        """
        return 1 if self.torch_device.type == "cpu" else self.config.batch_size

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        """The network, strictly loaded from the located weights (one path per declared file)."""
        raise NotImplementedError

    def _annotate(self, images: list[np.ndarray]) -> list[Annotation]:
        import torch

        model = self.model
        results: list[Annotation | None] = [None] * len(images)
        with torch.inference_mode():
            for indices, batch in batches_by_shape(images, self.forward_batch_size):
                for index, result in zip(indices, self._forward(model, batch)):
                    results[index] = result if isinstance(result, Annotation) else Annotation(result)
        return results  # type: ignore[return-value]

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray | Annotation]:
        """Run one batch of same-shape HxWx3 uint8 images through ``model``."""
        raise NotImplementedError

    def to_tensor(self, batch: list[np.ndarray]) -> torch.Tensor:
        """A same-shape batch as an NCHW float tensor (0..255 values) on the annotator's device and dtype."""
        import torch

        stacked = torch.from_numpy(np.stack(batch)).to(self.torch_device)
        # Contiguous NCHW: a channels-last view would send convolutions down kernels that round differently.
        return stacked.permute(0, 3, 1, 2).to(self.torch_dtype).contiguous()
