"""A foreground mask from an ONNX graph: a template for annotators whose network is not torch.

Method: any ONNX graph mapping an ``N x 3 x H x W`` float image in [0, 1] to ``N x 1 x H x W``
probabilities, run with onnxruntime on the CPU or, with ``device="cuda"``, on CUDA where onnxruntime
has it. Weights: ``mask.onnx`` in the (made-up) Hub repo ``example/mask``, licence MIT. The annotator
manages its own backend: ``load`` opens the session (never the constructor), ``close`` drops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from annotators.base import Annotator, AnnotatorConfig, param
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    from typing import Self


def mask_image(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Probabilities (HxW) to a white-on-black mask."""
    return np.where(probability > threshold, np.uint8(255), np.uint8(0))


@dataclass(frozen=True)
class MaskOnnxConfig(AnnotatorConfig):
    threshold: float = param(0.5, "foreground where the probability exceeds this", ge=0.0, le=1.0)
    weights: str | None = param(None, "ONNX file or folder (default: $CN_ANNOTATE_WEIGHTS, then the Hub cache)", runtime=True)
    device: str = param("cpu", "cpu or cuda", choices=("cpu", "cuda"), runtime=True)


class MaskOnnx(Annotator):
    name = "example_mask_onnx"
    description = "Example: foreground mask from an ONNX graph (onnxruntime), white on black"
    Config = MaskOnnxConfig
    config: MaskOnnxConfig
    grayscale = True
    weights = Weights(license="MIT", files=(WeightFile("mask.onnx"),), format="onnx", repo_id="example/mask")

    def __init__(self, config: MaskOnnxConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self._session: Any = None

    def load(self) -> Self:
        if self._session is None:
            import onnxruntime

            (path,) = self.weights.locate(self.config.weights)
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device == "cuda" else ["CPUExecutionProvider"]
            self._session = onnxruntime.InferenceSession(str(path), providers=providers)
        return self

    def close(self) -> None:
        self._session = None

    def _maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        session = self.load()._session
        name = session.get_inputs()[0].name
        maps = []
        for image in images:  # one at a time: images differ in size
            pixels = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
            (probability,) = session.run(None, {name: pixels})
            maps.append(mask_image(probability[0, 0], self.config.threshold))
        return maps
