"""Small image files for builder tests: real photographs, resized small, plus broken files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def photo(index: int, width: int, height: int) -> np.ndarray:
    """A real photograph (scikit-image's bundled ones) cropped and resized to ``width`` x ``height``."""
    from skimage import data

    sources = (data.astronaut, data.coffee, data.chelsea, data.rocket)
    image = sources[index % len(sources)]()
    offset = (index * 7) % 40
    image = image[offset : offset + min(image.shape[:2]) - 40, offset:]
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_AREA)


def encode(pixels: np.ndarray, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **save)
    return buffer.getvalue()


def write_photo(path: Path, index: int, width: int = 96, height: int = 80, fmt: str = "JPEG") -> bytes:
    data = encode(photo(index, width, height), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def write_bad_files(folder: Path) -> dict[str, str]:
    """Broken inputs with an image suffix, by file name -> the kind of skip expected."""
    folder.mkdir(parents=True, exist_ok=True)
    good = encode(photo(0, 64, 64), "JPEG")
    png = bytearray(encode(photo(1, 64, 64), "PNG"))
    png[len(png) // 2 : len(png) // 2 + 50] = bytes(50)  # zeroes in the middle of the pixel data
    (folder / "corrupt.png").write_bytes(bytes(png))
    (folder / "garbage.jpg").write_bytes(good[:20] + bytes(range(256)) * 4)
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "unreadable.jpg").symlink_to(folder / "missing-target.jpg")  # a dangling link cannot be read
    (folder / "huge.png").write_bytes(encode(np.zeros((300, 400, 3), np.uint8), "PNG"))  # over a small max_pixels
    return {
        "corrupt.png": "corrupt",
        "garbage.jpg": "not an image",
        "truncated.jpg": "corrupt",
        "empty.png": "empty",
        "text.png": "not an image",
        "unreadable.jpg": "unreadable",
        "huge.png": "too large",
    }


def logged_steps(log: Path) -> tuple[dict[int, dict], list[tuple[dict, dict]]]:
    """A training run's step log (one JSON record per line): the last record of each step, and the
    (first, replayed) pairs of steps logged twice."""
    final: dict[int, dict] = {}
    replayed = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by kill -9
            continue
        if record["step"] in final:
            replayed.append((final[record["step"]], record))
        final[record["step"]] = record
    return final, replayed
