"""Semantic label maps drawn as detectron2's ``Visualizer.draw_sem_seg`` draws them (the ControlNet
v1.1 OneFormer annotators' maps), with matplotlib's Agg renderer.

What the reference does (``semantic_run`` calls ``Visualizer(img, is_img=False)`` and
``draw_sem_seg(labels, alpha=1, is_text=False)``, its vendored detectron2 ``visualizer.py``):

* a figure of exactly H x W pixels (``frameon=False``, size ``(W + 1e-2) / dpi`` by
  ``(H + 1e-2) / dpi`` inches, one axes covering it, axis off), showing a white image of the input's
  size with nearest interpolation over the extent (0, W, H, 0);
* labels drawn in decreasing order of area (``np.argsort(-areas)``);
* each label's mask goes through ``cv2.findContours(RETR_CCOMP, CHAIN_APPROX_NONE)``. A mask
  without holes is drawn as one filled ``Polygon`` per contour of at least 3 points, vertices shifted
  by +0.5 px, face = the palette colour, edge = white, line width
  ``max(font // 15, 1)`` points with ``font = max(sqrt(H*W) // 90, 10)``, anti-aliased; a mask
  with holes is drawn as an RGBA ``imshow`` of the mask (no edge);
* the Agg buffer's RGB channels are the map.

So the map is ``palette[label]`` inside regions, with white anti-aliased borders about a pixel wide.
The edge colour is the reference commit's (``_OFF_WHITE = (1.0, 1.0, 1.0)`` at ControlNet-v1-1-nightly
``e2b4415``, where ``is_img=False`` also makes the background white); detectron2 upstream uses
(1, 1, 240/255). :func:`flat` is the edge-free alternative (``edges=False``), exactly ``palette[label]``.

matplotlib is imported when drawing, under its default style, so that a user's ``matplotlibrc``
cannot change the maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["EDGE_COLOUR", "draw_sem_seg", "edge_width", "flat"]

#: the reference commit's edge colour (its ``_OFF_WHITE``, which it set to pure white)
EDGE_COLOUR = (1.0, 1.0, 1.0)


def flat(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """``palette[label]`` (HxWx3 uint8 RGB)."""
    return np.asarray(palette, np.uint8)[labels]


def edge_width(height: int, width: int) -> float:
    """The polygon edge width in points: the reference's ``max(font // 15, 1)``."""
    font_size = max(np.sqrt(height * width) // 90, 10)
    return max(font_size // 15, 1)


def draw_sem_seg(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The label map (HxW ints, every value < ``len(palette)``) drawn like the reference; HxWx3
    uint8 RGB."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon

    height, width = labels.shape
    with matplotlib.style.context("default"):
        figure = Figure(frameon=False)
        dpi = figure.get_dpi()
        # the 1e-2 keeps matplotlib's truncation from losing a pixel
        figure.set_size_inches((width + 1e-2) / dpi, (height + 1e-2) / dpi)
        canvas = FigureCanvasAgg(figure)
        axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
        axes.axis("off")
        extent = (0, width, height, 0)
        axes.imshow(np.full((height, width, 3), 255, np.uint8), extent=extent, interpolation="nearest")
        line_width = edge_width(height, width)
        present, areas = np.unique(labels, return_counts=True)
        for label in present[np.argsort(-areas)]:
            colour = tuple(c / 255 for c in palette[int(label)])
            mask = (labels == label).astype(np.uint8)
            contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
            if hierarchy is None:
                continue
            if (hierarchy.reshape(-1, 4)[:, 3] >= 0).any():  # holes: drawn as an image, no edges
                rgba = np.zeros((height, width, 4), np.float32)
                rgba[:, :, :3] = colour
                rgba[:, :, 3] = mask
                axes.imshow(rgba, extent=extent)
                continue
            for contour in contours:
                points = contour.reshape(-1)
                if len(points) < 6:
                    continue
                axes.add_patch(
                    Polygon(
                        (points + 0.5).reshape(-1, 2),
                        fill=True,
                        facecolor=(*colour, 1),
                        edgecolor=(*EDGE_COLOUR, 1),
                        linewidth=line_width,
                    )
                )
        buffer, (drawn_width, drawn_height) = canvas.print_to_buffer()
    rgba = np.frombuffer(buffer, np.uint8).reshape(drawn_height, drawn_width, 4)
    if (drawn_height, drawn_width) != (height, width):
        raise RuntimeError(f"matplotlib drew {drawn_width}x{drawn_height} for a {width}x{height} label map")
    return rgba[:, :, :3].copy()
