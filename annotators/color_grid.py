"""Colour grid, the T2I-Adapter colour condition (Mou et al., "T2I-Adapter", 2023), as the
sd-webui-controlnet ``color`` preprocessor computes it: a cubic downsample by the cell size, then a
nearest-neighbour upsample, giving flat cells of the local colour. No weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, param


@dataclass(frozen=True)
class ColorGridConfig(AnnotatorConfig):
    cell_size: int = param(64, "side of a colour cell in pixels", ge=1, le=1024)


def color_grid(image: np.ndarray, cell_size: int) -> np.ndarray:
    height, width = image.shape[:2]
    cells = (max(1, width // cell_size), max(1, height // cell_size))
    small = cv2.resize(image, cells, interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


class ColorGrid(PerImageAnnotator):
    name = "color_grid"
    description = "T2I-Adapter colour grid: flat cells of the local colour"
    Config = ColorGridConfig
    map_kind = "image"

    def _map(self, image: np.ndarray) -> np.ndarray:
        return color_grid(image, self.config.cell_size)
