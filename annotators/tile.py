"""Tile resample, the sd-webui-controlnet ``tile_resample`` preprocessor for the v1.1 tile
ControlNet: the image is downsampled by a rate (AREA) to remove detail. No weights.

The reference returns the smaller image and lets the pipeline stretch it; here it is stretched back
to the input size (cubic) so that, as for every annotator, the map matches the image it belongs to.
Rates below 1.1 return the image unchanged, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotators.base import AnnotatorConfig, PerImageAnnotator, param


@dataclass(frozen=True)
class TileConfig(AnnotatorConfig):
    down_sampling_rate: float = param(1.0, "downsampling factor (below 1.1: no change)", ge=1.0, le=8.0)


def tile_resample(image: np.ndarray, rate: float) -> np.ndarray:
    if rate < 1.1:
        return image.copy()
    height, width = image.shape[:2]
    small = (max(1, int(width / rate)), max(1, int(height / rate)))
    reduced = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    return cv2.resize(reduced, (width, height), interpolation=cv2.INTER_CUBIC)


class TileResample(PerImageAnnotator):
    name = "tile_resample"
    description = "Downsampled image for the tile ControlNet, back at the input size"
    Config = TileConfig
    map_kind = "image"

    def _map(self, image: np.ndarray) -> np.ndarray:
        return tile_resample(image, self.config.down_sampling_rate)
