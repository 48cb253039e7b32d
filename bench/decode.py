"""How far reduced-scale JPEG decoding moves the maps, and how much faster it is.

    OMP_NUM_THREADS=1 python bench/decode.py                      # 12 photos of each kind
    OMP_NUM_THREADS=1 python bench/decode.py --other-opencv DIR   # also: two OpenCV versions

On camera-size JPEGs (``bench/photos.py``: ``upscaled`` and ``mosaic``) and on the largest photograph
that ships with a dependency (scikit-image's ``retina.jpg``, 1411 x 1411), each image goes to
``--resolution`` (512) two ways, both through the builder's own functions:

* exact: decoded at full size, then the reference ``resize_image`` (AREA);
* reduced: decoded by libjpeg at 1/2, 1/4 or 1/8 of its size (the largest scale that still covers the
  target), then the same AREA resize to the same size (``cn-annotate --decode reduced``).

It prints, per kind, the time of each path's decode and resize (single thread, best of 3), and how
far apart the results are: the resized pixels (mean absolute difference, share within 1 level) and
the canny maps (share of equal pixels, and edge F1 of the reduced path's edges against the exact
path's, exact pixels and within 1 px).

The yardstick is how far two installations of OpenCV are apart on the same exact path. With
``--other-opencv DIR``, a folder holding another ``cv2`` package (``pip install --target DIR
opencv-python-headless==4.8.1.78``), the exact path also runs in a subprocess that imports that
``cv2`` (its own libjpeg and resize), and its maps are compared with this one's the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from annotators.image import decode_image_info, resize_decoded  # noqa: E402
from bench.photos import KINDS, make_camera_photos  # noqa: E402

LOW, HIGH = 100, 200  # canny's reference thresholds

# The exact path with whatever cv2 the interpreter imports first (PYTHONPATH=DIR): decode, the
# reference resize_image (its rule written out here, so that no module of this checkout's imports
# a cv2 of its own), canny; the maps saved to an .npz.
_OTHER = """
import sys, cv2, numpy as np
resolution, output, paths = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
maps = {}
for index, path in enumerate(paths):
    rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    k = resolution / min(h, w)
    size = (max(1, int(np.round(w * k / 64.0))) * 64, max(1, int(np.round(h * k / 64.0))) * 64)
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)
    maps[str(index)] = cv2.Canny(resized, 100, 200)
np.savez(output, version=cv2.__version__, **maps)
"""


def exact(data: bytes, resolution: int) -> np.ndarray:
    return resize_decoded(decode_image_info(data), resolution)


def reduced(data: bytes, resolution: int) -> np.ndarray:
    return resize_decoded(decode_image_info(data, reduce_for=resolution), resolution)


def best_time(function, datas: list[bytes], resolution: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for data in datas:
            function(data, resolution)
        best = min(best, time.perf_counter() - start)
    return best / len(datas)


def map_agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> dict[str, float]:
    """Share of equal map pixels, and mean edge F1 of ``other``'s edges against ``reference``'s."""
    from controlnet.evaluation.metrics import edge_f1

    return {
        "equal": float(np.mean([np.mean(a == b) for a, b in zip(reference, other, strict=True)])),
        "f1": float(np.mean([edge_f1(a, b)["f1"] for a, b in zip(reference, other, strict=True)])),
        "f1_1px": float(np.mean([edge_f1(a, b, tolerance=1)["f1"] for a, b in zip(reference, other, strict=True)])),
    }


def other_opencv_maps(folder: Path, paths: list[Path], resolution: int) -> tuple[str, list[np.ndarray]]:
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "maps.npz"
        env = {**os.environ, "PYTHONPATH": str(folder)}
        subprocess.run([sys.executable, "-c", _OTHER, str(resolution), str(output), *map(str, paths)], env=env, check=True)
        with np.load(output) as saved:
            return str(saved["version"]), [saved[str(i)] for i in range(len(paths))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="camera-size photos of each kind")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--other-opencv", type=Path, default=None, help="a folder with another cv2 package (see above)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cn-annotate-bench-decode")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    import skimage.data

    cases = {kind: make_camera_photos(args.workdir, args.images, kind) for kind in KINDS}
    cases["retina (bundled)"] = [Path(skimage.data.__file__).parent / "retina.jpg"]
    print(f"{'photos':<18} {'n':>3} {'size':>10} {'exact ms':>9} {'reduced ms':>10} {'speed-up':>8}  {'RGB |diff|':>10} {'RGB <=1':>8}  {'map equal':>9} {'edge F1':>8} {'F1 1px':>7}  vs")
    summary = {}
    for kind, paths in cases.items():
        datas = [path.read_bytes() for path in paths]
        exact_rgb = [exact(data, args.resolution) for data in datas]
        reduced_rgb = [reduced(data, args.resolution) for data in datas]
        difference = np.concatenate([np.abs(a.astype(int) - b.astype(int)).ravel() for a, b in zip(exact_rgb, reduced_rgb, strict=True)])
        exact_maps = [cv2.Canny(image, LOW, HIGH) for image in exact_rgb]
        agreement = {"reduced decode": map_agreement(exact_maps, [cv2.Canny(image, LOW, HIGH) for image in reduced_rgb])}
        if args.other_opencv is not None:
            version, maps = other_opencv_maps(args.other_opencv, paths, args.resolution)
            agreement[f"OpenCV {version}"] = map_agreement(exact_maps, maps)
        times = best_time(exact, datas, args.resolution), best_time(reduced, datas, args.resolution)
        height, width = decode_image_info(datas[0]).size
        for position, (name, scores) in enumerate(agreement.items()):
            timing = f"{times[0] * 1e3:>9.1f} {times[1] * 1e3:>10.1f} {times[0] / times[1]:>7.2f}x  {difference.mean():>10.2f} {np.mean(difference <= 1):>8.1%}" if position == 0 else " " * 60
            lead = f"{kind:<18} {len(paths):>3} {f'{width}x{height}':>10}" if position == 0 else " " * 33
            print(f"{lead} {timing}  {scores['equal']:>9.2%} {scores['f1']:>8.3f} {scores['f1_1px']:>7.3f}  {name} (against exact, OpenCV {cv2.__version__})")
        summary[kind] = {"exact_ms": times[0] * 1e3, "reduced_ms": times[1] * 1e3, "rgb_mean_abs": float(difference.mean()), "agreement": agreement}
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
