"""Benchmark of the ``hough`` annotator's LSD refinements on scikit-image's photographs.

    OMP_NUM_THREADS=1 python bench/hough.py                 # every bundled photograph, at 512
    OMP_NUM_THREADS=1 python bench/hough.py --resolution 0  # at their own sizes

Each photograph is resized as the dataset builder does (``resize_image``, short side 512) and
annotated with ``refine="advanced"`` (LSD with its a-contrario NFA test: the previous default) and
``refine="standard"`` (the default now), both with the default ``min_length`` of 16 px; OpenCV runs
on one thread. Times are the best of ``--repeat`` runs (one run for an image whose advanced
refinement takes over a second). Agreement is measured against the advanced refinement's map:

* recall: the share of its drawn pixels within 1 px of the standard map's (a segment it keeps and
  the standard refinement loses lowers this);
* precision: the share of the standard map's drawn pixels within 1 px of its map (segments the NFA
  test would have dropped lower this);
* long segments kept: its segments of at least ``--long`` px whose pixels lie, 90% or more, within
  1 px of the standard map's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotators.hough import detect_segments, draw_segments  # noqa: E402
from annotators.image import hwc3, resize_image  # noqa: E402

#: scikit-image's bundled photographs (its drawings and test patterns are left out)
PHOTOGRAPHS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png",
    "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip


def timed(image: np.ndarray, refine: str, repeat: int) -> tuple[np.ndarray, float]:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        segments = detect_segments(image, 16.0, 0.0, 0.8, refine)
        best = min(best, time.perf_counter() - start)
        if best > 1.0:
            break
    return segments, best


def agreement(reference: np.ndarray, candidate: np.ndarray, height: int, width: int, long: float) -> tuple[float, float, int, int]:
    """Recall, precision (drawn pixels within 1 px) and long reference segments kept, of how many."""
    ours, theirs = draw_segments(reference, height, width) > 0, draw_segments(candidate, height, width) > 0
    kernel = np.ones((3, 3), np.uint8)
    near_ours = cv2.dilate(ours.astype(np.uint8), kernel) > 0
    near_theirs = cv2.dilate(theirs.astype(np.uint8), kernel) > 0
    recall = (ours & near_theirs).sum() / max(1, ours.sum())
    precision = (theirs & near_ours).sum() / max(1, theirs.sum())
    lengths = np.hypot(reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1])
    kept = 0
    longs = reference[lengths >= long]
    for segment in longs:
        drawn = draw_segments(segment[None], height, width) > 0
        kept += int((drawn & near_theirs).sum() >= 0.9 * drawn.sum())
    return float(recall), float(precision), kept, len(longs)


def main() -> None:
    import skimage.data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512, help="resize_image resolution (0: own size)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the best counts")
    parser.add_argument("--long", type=float, default=64.0, help="length of the segments that matter, in px")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    folder = Path(skimage.data.__file__).parent

    print(f"{'photograph':<20} {'size':>9} {'advanced s':>10} {'standard s':>10} {'speed-up':>8} {'segments':>9} {'recall':>7} {'precision':>9} {'long kept':>9}")
    totals = {"advanced": 0.0, "standard": 0.0, "kept": 0, "long": 0}
    recalls, precisions = [], []
    for name in PHOTOGRAPHS:
        image = hwc3(np.asarray(Image.open(folder / name).convert("RGB")))
        if args.resolution:
            image = resize_image(image, args.resolution)
        height, width = image.shape[:2]
        advanced, advanced_s = timed(image, "advanced", args.repeat)
        standard, standard_s = timed(image, "standard", args.repeat)
        recall, precision, kept, longs = agreement(advanced, standard, height, width, args.long)
        totals["advanced"] += advanced_s
        totals["standard"] += standard_s
        totals["kept"] += kept
        totals["long"] += longs
        recalls.append(recall)
        precisions.append(precision)
        print(
            f"{Path(name).stem:<20} {width:>4}x{height:<4} {advanced_s:>10.3f} {standard_s:>10.3f} {advanced_s / standard_s:>7.1f}x"
            f" {len(advanced):>4}/{len(standard):<4} {recall:>7.3f} {precision:>9.3f} {kept:>4}/{longs:<4}"
        )
    print()
    print(f"all {len(PHOTOGRAPHS)} photographs: advanced {totals['advanced']:.2f} s, standard {totals['standard']:.2f} s ({totals['advanced'] / totals['standard']:.0f}x)")
    print(f"recall of the advanced map's pixels: worst {min(recalls):.3f}, mean {np.mean(recalls):.3f}")
    print(f"precision against it: worst {min(precisions):.3f}, mean {np.mean(precisions):.3f}")
    print(f"segments of {args.long:.0f} px or more kept: {totals['kept']} of {totals['long']}")


if __name__ == "__main__":
    main()
