"""Content shuffle, the v1.1 ``shuffle`` ControlNet's condition (``ContentShuffleDetector``): the
image is warped by a smooth random flow field built from cubic-upsampled noise. No weights.

The noise is seeded from the image's pixels and the ``seed`` parameter, so a rebuild (or a
different batch order) gives the same map for the same image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, image_seed, param


@dataclass(frozen=True)
class ShuffleConfig(AnnotatorConfig):
    cell_size: int = param(256, "scale of the random flow field in pixels", ge=2, le=4096)
    seed: int = param(0, "combined with each image's pixels to seed its shuffle", ge=0, le=2**63 - 1)


def noise_disk(rng: np.random.Generator, height: int, width: int, cell_size: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse uniform grid, cubic-upsampled and cropped to HxW."""
    coarse = rng.uniform(0.0, 1.0, size=(height // cell_size + 2, width // cell_size + 2))
    smooth = cv2.resize(coarse, (width + 2 * cell_size, height + 2 * cell_size), interpolation=cv2.INTER_CUBIC)
    smooth = smooth[cell_size : cell_size + height, cell_size : cell_size + width]
    smooth = smooth - smooth.min()
    return smooth / max(float(smooth.max()), 1e-12)


def shuffle(image: np.ndarray, rng: np.random.Generator, cell_size: int) -> np.ndarray:
    height, width = image.shape[:2]
    map_x = noise_disk(rng, height, width, cell_size) * float(width - 1)
    map_y = noise_disk(rng, height, width, cell_size) * float(height - 1)
    return cv2.remap(image, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR)


class Shuffle(PerImageAnnotator):
    name = "shuffle"
    description = "Content shuffle: the image warped by a smooth random flow, seeded per image"
    Config = ShuffleConfig

    def _map(self, image: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(image_seed(image, self.config.seed))
        return shuffle(image, rng, self.config.cell_size)
