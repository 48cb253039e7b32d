"""Camera-size test photographs made from scikit-image's bundled ones, for the decoding benchmarks.

No camera photographs ship with the project's dependencies (the largest bundled photograph,
``retina.jpg``, is 1411 x 1411), so 12-megapixel JPEGs (4032 x 3024, a phone camera's size) are made
two ways, which bracket what a camera gives:

* ``upscaled``: one photograph, cropped to 4:3 and enlarged with Lanczos: a camera's size with far
  less fine detail than a camera's pixels hold (the easy case for a reduced-scale decode);
* ``mosaic``: 48 tiles of 504 x 504, each a crop of a photograph at its own resolution: detail at
  every pixel, as a sharp camera photo has, plus the tiles' seams (the hard case).

Both are written as JPEG at quality 92 with 4:2:0 chroma subsampling, as cameras write them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CAMERA_SIZE = (3024, 4032)  # height, width
KINDS = ("upscaled", "mosaic")
TILE = 504  # 3024 / 6 and 4032 / 8


def _photographs() -> list[np.ndarray]:
    """scikit-image's bundled photographs (bench/hough.py's set) as RGB, gray ones repeated."""
    from skimage import io

    import skimage.data
    from annotators.image import hwc3
    from bench.hough import PHOTOGRAPHS

    folder = Path(skimage.data.__file__).parent
    return [hwc3(np.asarray(io.imread(folder / name))[..., :3].astype(np.uint8)) for name in PHOTOGRAPHS]


def camera_photo(index: int, kind: str, photographs: list[np.ndarray]) -> np.ndarray:
    """The ``index``-th camera-size RGB image of ``kind`` (seeded by ``index``)."""
    rng = np.random.default_rng(index)
    height, width = CAMERA_SIZE
    if kind == "upscaled":
        source = photographs[index % len(photographs)]
        side = min(source.shape[0], source.shape[1] * 3 // 4)
        crop = source[:side, : side * 4 // 3]
        return cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_LANCZOS4)
    if kind != "mosaic":
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    large = [p for p in photographs if min(p.shape[:2]) >= TILE]
    canvas = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, TILE):
        for left in range(0, width, TILE):
            source = large[int(rng.integers(len(large)))]
            y, x = (int(rng.integers(0, side - TILE + 1)) for side in source.shape[:2])
            canvas[top : top + TILE, left : left + TILE] = source[y : y + TILE, x : x + TILE]
    return canvas


def make_camera_photos(folder: Path, count: int, kind: str) -> list[Path]:
    """``count`` camera-size JPEGs of ``kind`` in ``folder`` (made once; kept if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{kind}-{index:04d}.jpg" for index in range(count)]
    missing = [path for path in paths if not path.exists()]
    if missing:
        photographs = _photographs()
        for index, path in enumerate(paths):
            if not path.exists():
                bgr = cv2.cvtColor(camera_photo(index, kind, photographs), cv2.COLOR_RGB2BGR)
                cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420])
    return paths
