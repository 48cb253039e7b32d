"""Post-processing operators of the reference annotators, shared by several of them."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["min_max_norm", "nms", "safe_step", "scribble_from_soft_edges"]

# The four 3x3 line structuring elements: horizontal, vertical and the two diagonals.
_NMS_DIRECTIONS = tuple(
    np.array(k, dtype=np.uint8)
    for k in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
        [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
    )
)


def nms(x: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """The v1.1 non-maximum suppression of a soft edge map: blur, keep pixels that are a maximum
    along at least one of four directions, and binarise above ``threshold`` (255 / 0, uint8)."""
    blurred = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    kept = np.zeros_like(blurred)
    for kernel in _NMS_DIRECTIONS:
        np.putmask(kept, cv2.dilate(blurred, kernel=kernel) == blurred, blurred)
    return np.where(kept > threshold, np.uint8(255), np.uint8(0))


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    """Quantise a [0, 1] map into ``step`` levels (the "safe" soft-edge variants), as float32."""
    y = x.astype(np.float32) * float(step + 1)
    return y.astype(np.int32).astype(np.float32) / float(step)


def min_max_norm(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Shift to a minimum of 0 and scale to a maximum of 1 (guarded against a flat input)."""
    x = x - np.min(x)
    return x / np.maximum(np.max(x), eps)


def scribble_from_soft_edges(
    edges: np.ndarray,
    nms_threshold: float = 127,
    nms_sigma: float = 3.0,
    blur_sigma: float = 3.0,
    stroke_threshold: int = 4,
) -> np.ndarray:
    """The reference "fake scribble" post-processing of a uint8 soft-edge map (v1.0
    ``gradio_fake_scribble2image`` and v1.1 ``gradio_scribble``): thin the edges with :func:`nms`,
    thicken them again with a Gaussian blur, and binarise: 255 where the blurred value exceeds
    ``stroke_threshold``, 0 elsewhere. The result has the input's shape."""
    thin = nms(edges, nms_threshold, nms_sigma)
    thick = cv2.GaussianBlur(thin, (0, 0), blur_sigma)
    return np.where(thick > stroke_threshold, np.uint8(255), np.uint8(0))
