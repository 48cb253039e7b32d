"""Learned line art: the ControlNet v1.1 "lineart" (realistic and coarse) and "lineart_anime"
conditions.

Methods and weights (lllyasviel/Annotators):
  * ``lineart_realistic`` / ``lineart_coarse``: the informative-drawings generator (Chan, Durand and
    Isola, CVPR 2022; code MIT) as ControlNet v1.1's ``LineartDetector`` runs it, with
    ``sk_model.pth`` / ``sk_model2.pth`` (published with ControlNet v1.1; the upstream code is MIT).
    Input RGB/255 at full size; output the sigmoid map x255, truncated to uint8.
  * ``lineart_anime``: the pix2pix U-Net (Isola et al., CVPR 2017; code BSD) as ``LineartAnimeDetector``
    runs it, with ``netG.pth`` (published with ControlNet v1.1, no separate licence stated). Input
    resized (INTER_CUBIC) so each side is the next multiple of 256, scaled to [-1, 1]; output
    ``tanh x127.5 + 127.5`` resized back (INTER_CUBIC), clipped and truncated to uint8.

Polarity: both detectors draw dark lines on white. ControlNet's lineart models consume the inverse
(``gradio_lineart.py`` conditions on ``1 - map/255``; sd-webui-controlnet returns ``255 - map``), so
these annotators return ``255 - detector map``: white lines on black.

Deviation, for sizes the reference cannot run: the generator needs sides that are multiples of 4
(at least 8) to give back the input size, so other images are padded on the bottom and right by
edge replication and the result cropped. Multiples of 4 (e.g. 512) are untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np

from annotators.neural import NeuralAnnotator, NeuralConfig, pad_to_multiple
from annotators.weights import WeightFile, Weights

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LineartConfig(NeuralConfig):
    """No method parameters: the reference detectors have none."""


def sketch_to_map(sketch: np.ndarray) -> np.ndarray:
    """A detector's [0, 1] sketch (dark lines on light) to the condition map: the reference uint8
    conversion (x255, clip, truncate), then inverted to white lines on black."""
    return 255 - (sketch.astype(np.float32) * 255.0).clip(0, 255).astype(np.uint8)


def anime_output_to_map(tanh_output: np.ndarray, height: int, width: int) -> np.ndarray:
    """The U-Net's tanh output (dark lines on light) to the condition map at ``height`` x ``width``:
    the reference rescale to 0..255, cubic resize, clip and truncation, then inverted."""
    line = tanh_output.astype(np.float32) * 127.5 + 127.5
    if line.shape != (height, width):
        line = cv2.resize(line, (width, height), interpolation=cv2.INTER_CUBIC)
    return 255 - line.clip(0, 255).astype(np.uint8)


def anime_network_size(height: int, width: int) -> tuple[int, int]:
    """Each side rounded up to a multiple of 256, as the reference does."""
    return 256 * int(np.ceil(height / 256.0)), 256 * int(np.ceil(width / 256.0))


def remap_sketch_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``sk_model*.pth`` are plain state dicts whose names are the module's."""
    return dict(checkpoint)


def remap_anime_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``netG.pth`` may carry DataParallel's ``module.`` prefix; the reference removes it."""
    return {key.replace("module.", ""): value for key, value in checkpoint.items()}


def _sketch_weights(filename: str) -> Weights:
    return Weights(license="MIT (ControlNet v1.1 / informative-drawings)", files=(WeightFile(filename, remap_sketch_checkpoint),))


class _SketchLineart(NeuralAnnotator):
    """The informative-drawings generator with one of the two published checkpoints."""

    Config = LineartConfig
    grayscale = True
    #: the generator halves twice, then doubles twice
    MULTIPLE: ClassVar[int] = 4
    MIN_SIDE: ClassVar[int] = 8
    map_kind = "soft_edges"

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.lineart import LineartGenerator

        return self.weights.load_into(LineartGenerator(3, 1, 3), paths[0])

    def network_input(self, batch: list[np.ndarray]) -> torch.Tensor:
        """Same-shape RGB images to ``(N, 3, H', W')`` in [0, 1], padded to a size the net can run."""
        return pad_to_multiple(self.to_tensor(batch) / 255.0, self.MULTIPLE, self.MIN_SIDE)

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        height, width = batch[0].shape[:2]
        sketches = model(self.network_input(batch))[:, 0, :height, :width].float().cpu().numpy()
        return [sketch_to_map(sketch) for sketch in sketches]


class LineartRealistic(_SketchLineart):
    name = "lineart_realistic"
    description = "Learned line art of photos (informative-drawings, sk_model), white on black"
    weights = _sketch_weights("sk_model.pth")


class LineartCoarse(_SketchLineart):
    name = "lineart_coarse"
    description = "Coarse learned line art (informative-drawings, sk_model2), white on black"
    weights = _sketch_weights("sk_model2.pth")


class LineartAnime(NeuralAnnotator):
    name = "lineart_anime"
    description = "Anime-style learned line art (pix2pix U-Net, netG), white on black"
    Config = LineartConfig
    grayscale = True
    weights = Weights(license="unspecified (published with ControlNet v1.1)", files=(WeightFile("netG.pth", remap_anime_checkpoint),))
    map_kind = "soft_edges"

    def _build(self, paths: list[Path]) -> torch.nn.Module:
        from annotators.nets.unet_generator import UnetGenerator

        return self.weights.load_into(UnetGenerator(3, 1, 8, 64), paths[0])

    def network_input(self, batch: list[np.ndarray]) -> torch.Tensor:
        """Same-shape RGB images, cubic-resized to multiples of 256, as ``(N, 3, H', W')`` in [-1, 1]."""
        height, width = batch[0].shape[:2]
        net_height, net_width = anime_network_size(height, width)
        if (net_height, net_width) != (height, width):
            batch = [cv2.resize(image, (net_width, net_height), interpolation=cv2.INTER_CUBIC) for image in batch]
        return self.to_tensor(batch) / 127.5 - 1.0

    def _forward(self, model: torch.nn.Module, batch: list[np.ndarray]) -> Sequence[np.ndarray]:
        height, width = batch[0].shape[:2]
        outputs = model(self.network_input(batch))[:, 0].float().cpu().numpy()
        return [anime_output_to_map(output, height, width) for output in outputs]
