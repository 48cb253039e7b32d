"""The synthetic fill50k-like set: a filled circle of a named colour on a named background.

Each image is written as a PNG beside a ``metadata.jsonl`` of captions ("a red circle on a blue
background"), the layout ``cn-annotate`` reads; the circles' geometry is kept in ``circles.jsonl`` to
score how well samples place them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 50),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "cyan": (40, 200, 210),
    "pink": (240, 130, 180),
}


@dataclass(frozen=True)
class Circle:
    file_name: str
    caption: str
    background: str
    colour: str
    x: int
    y: int
    radius: int


def draw(circle: Circle, size: int) -> np.ndarray:
    """The RGB image of ``circle`` (no anti-aliasing: two flat colours)."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = COLOURS[circle.background]
    cv2.circle(image, (circle.x, circle.y), circle.radius, COLOURS[circle.colour], thickness=-1, lineType=cv2.LINE_8)
    return image


def circle_mask(circle: Circle, size: int) -> np.ndarray:
    """Where the circle is (bool HxW)."""
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (circle.x, circle.y), circle.radius, 1, thickness=-1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def random_circles(count: int, size: int, seed: int, prefix: str = "") -> list[Circle]:
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    circles = []
    for index in range(count):
        background, colour = rng.choice(len(names), size=2, replace=False)
        radius = int(rng.integers(round(size * 0.12), round(size * 0.3) + 1))
        x, y = (int(v) for v in rng.integers(radius, size - radius, size=2))
        caption = f"a {names[colour]} circle on a {names[background]} background"
        circles.append(Circle(f"{prefix}{index:05d}.png", caption, names[background], names[colour], x, y, radius))
    return circles


def write_set(folder: Path, circles: list[Circle], size: int) -> Path:
    """The images, ``metadata.jsonl`` (captions) and ``circles.jsonl`` (geometry) in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metadata.jsonl").open("w") as captions, (folder / "circles.jsonl").open("w") as geometry:
        for circle in circles:
            Image.fromarray(draw(circle, size)).save(folder / circle.file_name)
            captions.write(json.dumps({"file_name": circle.file_name, "text": circle.caption}) + "\n")
            geometry.write(json.dumps(asdict(circle)) + "\n")
    return folder


def read_circles(folder: Path) -> list[Circle]:
    return [Circle(**json.loads(line)) for line in (folder / "circles.jsonl").read_text().splitlines() if line]


def sample_mask(sample: np.ndarray, circle: Circle) -> np.ndarray:
    """Pixels of a generated sample closer to the caption's circle colour than to its background's."""
    pixels = sample.astype(np.float32)
    to_circle = np.linalg.norm(pixels - np.float32(COLOURS[circle.colour]), axis=2)
    to_background = np.linalg.norm(pixels - np.float32(COLOURS[circle.background]), axis=2)
    return to_circle < to_background


def circle_iou(sample: np.ndarray, circle: Circle) -> float:
    """IoU between the circle the sample drew (by colour) and the condition's circle."""
    target = circle_mask(circle, sample.shape[0])
    drawn = sample_mask(sample, circle)
    union = np.logical_or(target, drawn).sum()
    return float(np.logical_and(target, drawn).sum() / union) if union else 1.0


def nearest_colours(sample: np.ndarray) -> np.ndarray:
    """For each pixel, the index in :data:`COLOURS` of the named colour nearest to it (HxW)."""
    palette = np.array(list(COLOURS.values()), np.float32)
    distances = np.linalg.norm(sample.astype(np.float32)[:, :, None, :] - palette[None, None], axis=3)
    return distances.argmin(axis=2)


def drawn_colours(sample: np.ndarray, min_share: float = 0.02) -> tuple[str, str | None]:
    """The named colours a sample drew: the background is the commonest colour of its border pixels,
    the circle the commonest other colour (None when less than ``min_share`` of the image has one)."""
    names = list(COLOURS)
    labels = nearest_colours(sample)
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    background = int(np.bincount(border, minlength=len(names)).argmax())
    inside = labels[labels != background]
    if inside.size < min_share * labels.size:
        return names[background], None
    return names[background], names[int(np.bincount(inside, minlength=len(names)).argmax())]
