"""Benchmark of the dataset builder: `cn-annotate canny` against bare single-process loops.

    OMP_NUM_THREADS=1 python bench/annotate.py                 # 500 photos, then 5000 for peak RSS
    OMP_NUM_THREADS=1 python bench/annotate.py --images 500 --large 0 --workers 2

The photos are JPEGs (quality 90) made from scikit-image's bundled colour photographs by random
crops and resizes (short side 400-900 pixels, so most need resizing to 512), written once to a
temporary folder. Compared in one run, on the same photos:

* ``cn-annotate canny`` with 1 worker and with N workers (default: all cores), each in a fresh
  subprocess; the time is that of the command itself (listing, decoding, annotating, writing the
  Parquet shards and the card), after Python has started and imported its modules;
* a bare loop, the fair one-core loop: ``cv2.imread`` straight to contiguous RGB (as the builder
  decodes), ``resize_image``, ``cv2.Canny``, ``cv2.imencode`` to PNG; the ratios are against it;
* the same loop also JPEG-encoding each resized photo (quality 95) and decoding that JPEG again,
  which the builder must do to store it and to annotate exactly what it stores: what one worker
  could reach if the rest of the builder (reading, captions, Parquet, card) cost nothing; and N
  copies of it in parallel processes, each on its share of the photos, the same bound for N workers;
* a one-image-at-a-time loop in the style of controlnet_aux: PIL, numpy, HWC3, resize, Canny,
  HWC3, PIL, PNG;
* ``cn-annotate mediapipe_pose`` with N workers against MediaPipe pose run one image at a time in
  one process (decode, resize, detect, draw, PNG), on the first ``--pose-images`` photos.

With ``--engine ray`` the script compares the Ray engine with the local one instead, on the same
photos (default 1500), interleaved ``--repeat`` times, each in a fresh subprocess like the runs
above: ``cn-annotate canny --workers N`` against ``cn-annotate canny --engine ray`` starting a
local Ray with N CPUs inside the command (what a user without a cluster gets; the start-up is
timed), and against a Ray cluster already running (``ray start --head --num-cpus N``, joined with
``--ray-address``; what a cluster user gets). It prints Ray's time over the local engine's
(target: at most 1.3x for canny over 1500 photos with the started Ray)::

    OMP_NUM_THREADS=1 python bench/annotate.py --engine ray

With ``--ready`` the photos are made at sizes that ``resize_image`` keeps (short side 512, sides
multiples of 64), so the builder stores them unchanged; this isolates the cost of re-encoding
resized photos, which the bare loops do not do. The standard case for the per-core targets is
``--ready --images 1500`` (768 x 512 photos): 1 worker at least 0.95x the bare loop and 2 workers at
least 1.8x, start-up included.

First comes the camera-photo case (``--camera N``, default 60; 0 skips it): N camera-size JPEGs
(4032 x 3024, ``bench/photos.py``'s ``mosaic`` kind) to 512, by the bare loop with the exact decode
and with libjpeg's reduced-scale decode, and by ``cn-annotate canny --decode exact|reduced`` with
1 and N workers; then how far the reduced decode's maps are from the exact one's (share of equal
pixels, edge F1). ``--camera-large M`` also builds M/10 and M of them (hard links to the N photos)
with N workers, for peak RSS at both sizes.

With ``--baseline REV`` the builder of that git revision (e.g. the commit before a change) runs too,
from a copy extracted with ``git archive``, on the same photos and interleaved with the current one,
one worker each: ``cn-annotate canny`` now (whose re-encoded JPEGs are decoded again before they are
annotated, so that each pair agrees with itself) and with ``--image-format png`` (lossless: no
second decode, larger files), against the previous ``cn-annotate canny``; and ``cn-annotate hough``
now and then on scikit-image's 20 photographs (``bench/hough.py``'s set). For each canny output it
counts the rows whose stored map equals canny of the stored image as a reader decodes it, and the
mean F1 of those edge maps (exact pixels). These runs are compared by the CPU time of their one
process, which a busy shared machine disturbs far less than their wall time.

The machine may be shared, so the bare loop and both builder runs are repeated, interleaved,
``--repeat`` times (default 3) and each keeps its best time; the controlnet_aux-style loop, which is
only there for scale, runs once. OpenCV runs single-threaded in every variant (the builder sets this in its workers), so "1
worker" means one core. Peak RSS is the builder's main process (its own ``VmHWM``) and its largest
worker (``getrusage`` of its children); with ``--large`` the builder runs again on that many photos
to show that memory does not grow with the number of images. Targets: with ``--ready``, 1 worker at
least 0.95x the bare loop and 2 workers at least 1.8x; peak RSS at ``--large`` photos within 10% of
the figure at ``--images``. With photos to resize, the bound is the loop that also stores each
resized photo, and N of those in parallel.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from annotators.image import REDUCED_COLOR_FLAGS, hwc3, jpeg_reduction, resize_image, resized_size
from controlnet.dataset.build import default_workers

RESOLUTION = 512

_RUNNER = """
import importlib, json, resource, sys, time
import cli.annotate
try:  # as cn-annotate's main() does, before pyarrow is imported below (a baseline may predate it)
    from controlnet.dataset.shards import prefer_system_allocator
    prefer_system_allocator()
except ImportError:
    pass
import pandas, pyarrow.parquet  # imports excluded from the time (pyarrow loads pandas)
for name in ("controlnet.dataset.build", "controlnet.dataset.card", "controlnet.dataset.sources", "controlnet.build", "controlnet.card", "controlnet.sources",
             "typer._adapters", "yaml", "filelock"):  # the last three: imported on first use by typer (pydantic) and the card
    try:  # the builder's modules, in this checkout's layout or in a baseline's older one
        importlib.import_module(name)
    except ImportError:
        pass
args = json.loads(sys.argv[1])
if "ray" in args:
    import ray, controlnet.dataset.engines.ray  # also excluded
sys.argv = ["cn-annotate", *args]
usage = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
try:
    cli.annotate.main()
    code = 0
except SystemExit as exit:
    code = exit.code or 0
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
try:  # this process's own peak: ru_maxrss would also hold the benchmark's, whose memory it started in
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("BENCH " + json.dumps({"code": code, "seconds": seconds, "cpu_seconds": cpu, "main_rss_kb": peak,
      "worker_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def make_photos(folder: Path, count: int, seed: int = 0, ready: bool = False) -> list[Path]:
    """``count`` JPEG photos from random crops and resizes of the bundled colour photographs;
    ``ready``: at sizes ``resize_image`` keeps (short side 512, sides multiples of 64)."""
    from skimage import data

    sources = [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")]
    sources = [hwc3(image) for image in sources]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = sources[index % len(sources)]
        height, width = image.shape[:2]
        crop_h, crop_w = (int(side * rng.uniform(0.5, 1.0)) for side in (height, width))
        top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        crop = image[top : top + crop_h, left : left + crop_w]
        short = RESOLUTION if ready else int(rng.integers(400, 901))
        scale = short / min(crop_h, crop_w)
        size = (max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
        if ready:
            size = tuple(max(RESOLUTION, round(side / 64) * 64) for side in size)
        photo = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        path = folder / f"{index:05d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


#: decoded straight to contiguous RGB, as the builder decodes (a [:, :, ::-1] view would cost a copy)
RGB = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION


def bare_loop(paths: list[Path], store_resized: bool = False) -> float:
    """The fair one-core loop: ``cv2.imread`` to RGB, ``resize_image``, Canny, PNG.

    ``store_resized``: also JPEG-encode each resized photo (quality 95) and annotate that JPEG
    decoded, as the builder must to store it with a map that agrees with it: the bound on what the
    builder can reach with one worker."""
    start = time.perf_counter()
    for path in paths:
        image = cv2.imread(str(path), RGB)
        resized = resize_image(image, RESOLUTION)
        if store_resized and resized.shape != image.shape:
            ok, stored = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert ok
            resized = cv2.imdecode(stored, RGB)
        edges = cv2.Canny(resized, 100, 200)
        ok, _ = cv2.imencode(".png", edges)
        assert ok
    return time.perf_counter() - start


def bare_reduced_loop(paths: list[Path]) -> float:
    """The fair loop with libjpeg's reduced-scale decode: the header's size, the largest reduced
    scale that covers the target, ``cv2.imread`` at that scale, AREA to the target, Canny, PNG."""
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as header:
            width, height = header.size
        target = resized_size(height, width, RESOLUTION)
        reduction = jpeg_reduction(height, width, target)
        image = cv2.imread(str(path), REDUCED_COLOR_FLAGS[reduction] | RGB)
        resized = cv2.resize(image, target[::-1], interpolation=cv2.INTER_AREA)
        edges = cv2.Canny(resized, 100, 200)
        ok, _ = cv2.imencode(".png", edges)
        assert ok
    return time.perf_counter() - start


def _stored_loop_on_one_core(paths: list[Path]) -> float:
    cv2.setNumThreads(1)
    return bare_loop(paths, store_resized=True)


def parallel_stored_loops(paths: list[Path], processes: int) -> float:
    """``processes`` copies of the storing loop at once, each on its share of the photos: the bound for
    that many workers, set by the cores, caches and memory bandwidth they share."""
    import multiprocessing

    shares = [paths[i::processes] for i in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_stored_loop_on_one_core, [paths[:processes]] * processes)  # start the processes outside the timing
        start = time.perf_counter()
        pool.map(_stored_loop_on_one_core, shares, chunksize=1)
        return time.perf_counter() - start


def aux_style_loop(paths: list[Path]) -> float:
    """What annotating one image at a time through PIL looks like (controlnet_aux's CannyDetector)."""
    start = time.perf_counter()
    for path in paths:
        image = np.array(Image.open(path).convert("RGB"), dtype=np.uint8)
        image = resize_image(hwc3(image), RESOLUTION)
        edges = hwc3(cv2.Canny(image, 100, 200))
        buffer = io.BytesIO()
        Image.fromarray(edges).save(buffer, "PNG")
    return time.perf_counter() - start


def pose_loop(paths: list[Path]) -> float:
    """MediaPipe pose one image at a time in one process: decode, resize, detect, draw, PNG."""
    import annotators

    pose = annotators.create("mediapipe_pose")
    pose([np.zeros((64, 64, 3), np.uint8)])  # build the graph outside the timing, as the builder's workers do
    start = time.perf_counter()
    for path in paths:
        image = resize_image(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), RESOLUTION)
        (drawn,) = pose([image])
        ok, _ = cv2.imencode(".png", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        assert ok
    return time.perf_counter() - start


def cn_annotate(folder: Path, output: Path, workers: int, annotator: str = "canny", src: Path = REPO, extra: tuple[str, ...] = (), ray_env: dict[str, str] | None = None) -> dict[str, float]:
    """One ``cn-annotate`` run in a fresh process, with the code in ``src`` (this checkout, or a
    baseline revision's copy)."""
    shutil.rmtree(output, ignore_errors=True)
    args = [annotator, str(folder), "-o", str(output), "--workers", str(workers), *extra]
    env = {**os.environ, **(ray_env or {}), "PYTHONPATH": os.pathsep.join(filter(None, (str(src), os.environ.get("PYTHONPATH")))), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(args)], cwd=src, env=env, capture_output=True, text=True)
    line = next((line for line in done.stdout.splitlines() if line.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"cn-annotate failed:\n{done.stdout}\n{done.stderr}")
    result = json.loads(line.removeprefix("BENCH "))
    if result["code"] != 0:
        raise SystemExit(f"cn-annotate exited with {result['code']}:\n{done.stdout}\n{done.stderr}")
    return result


def checkout(revision: str, destination: Path) -> Path:
    """The files of ``revision`` of this repository, extracted to ``destination``."""
    if not destination.is_dir():
        destination.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    return destination


def skimage_photographs(folder: Path) -> Path:
    """scikit-image's 20 bundled photographs (bench/hough.py's set), copied as they are."""
    import skimage.data

    from bench.hough import PHOTOGRAPHS

    if not folder.is_dir():
        folder.mkdir(parents=True)
        for name in PHOTOGRAPHS:
            shutil.copy(Path(skimage.data.__file__).parent / name, folder / name)
    return folder


def pairs_agree(output: Path) -> tuple[int, int, float]:
    """Rows whose stored canny map equals canny of the stored image decoded by Pillow, the rows, and
    the mean F1 of the two edge maps."""
    import pyarrow.parquet as pq

    from controlnet.dataset.layout import shard_paths

    agree = total = 0
    scores = []
    for shard in shard_paths(output):
        for row in pq.read_table(shard, columns=["image", "conditioning_image"]).to_pylist():
            image = hwc3(np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")))
            again = cv2.Canny(image, 100, 200) > 0
            stored = np.asarray(Image.open(io.BytesIO(row["conditioning_image"]["bytes"]))) > 0
            agree += int(np.array_equal(again, stored))
            total += 1
            both = int((again & stored).sum())
            scores.append(2 * both / max(1, int(again.sum() + stored.sum())))
    return agree, total, float(np.mean(scores)) if scores else 1.0


def run_seconds(run: dict[str, float]) -> float:
    return run["seconds"]


def data_mib(output: Path) -> float:
    return sum(p.stat().st_size for p in (output / "data").glob("*.parquet")) / 2**20


def start_ray_head(cpus: int, temp_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """A one-node Ray cluster with ``cpus`` CPUs (``ray start --head --block``), and its address."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    command = [str(ray_cli), "start", "--head", "--block", f"--port={port}", f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    head = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert head.stdout is not None
    for line in head.stdout:  # printed once the node runs
        if "block forever" in line:
            return head, f"127.0.0.1:{port}"
    raise SystemExit("ray start failed")


def ray_comparison(args: argparse.Namespace, workdir: Path) -> None:
    """The local engine against the Ray engine, on the same photos, interleaved."""
    images = args.images if args.images is not None else 1500
    photos = workdir / f"photos-{images}"
    if not photos.is_dir():
        make_photos(photos, images)
    import secrets

    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths live under it
    token = temp_dir / "auth_token"  # Ray's token authentication, with a token of this run's own
    token.write_text(secrets.token_hex(32))
    ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    head, address = start_ray_head(args.workers, temp_dir, ray_env)
    try:
        runs: dict[str, dict[str, float]] = {}
        variants = {
            f"cn-annotate canny, {args.workers} workers": (),
            f"--engine ray, starting Ray ({args.workers} CPUs)": ("--engine", "ray"),
            "--engine ray, joining a running Ray": ("--engine", "ray", "--ray-address", address),
        }
        for _ in range(args.repeat):  # interleaved, so that a busy spell on a shared machine hits all alike
            for name, extra in variants.items():
                run = cn_annotate(photos, workdir / "out", args.workers, extra=extra, ray_env=ray_env if extra else None)
                runs[name] = min(runs.get(name, run), run, key=lambda r: r["seconds"])
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
    local = runs[next(iter(variants))]["seconds"]
    print(f"{'method':<44} {'images':>6} {'seconds':>8} {'images/s':>9} {'img/h/core':>10} {'time vs local':>13}")
    for name, run in runs.items():
        rate = images / run["seconds"]
        print(f"{name:<44} {images:>6} {run['seconds']:>8.2f} {rate:>9.1f} {rate * 3600 / args.workers:>10.0f} {run['seconds'] / local:>12.2f}x")
    print()
    started, joined = (runs[name]["seconds"] / local for name in list(variants)[1:])
    print(f"Ray engine time / local engine time: {started:.2f}x starting Ray (target <= 1.3x), {joined:.2f}x joining a running Ray")


def canny_maps(output: Path) -> dict[str, np.ndarray]:
    """The stored canny maps of a built dataset, by file name."""
    import pyarrow.parquet as pq

    from controlnet.dataset.layout import shard_paths

    maps = {}
    for shard in shard_paths(output):
        for row in pq.read_table(shard, columns=["file_name", "conditioning_image"]).to_pylist():
            maps[row["file_name"]] = np.asarray(Image.open(io.BytesIO(row["conditioning_image"]["bytes"])))
    return maps


def camera_comparison(args: argparse.Namespace, workdir: Path) -> None:
    """Camera-size JPEGs (``bench/photos.py``, the ``mosaic`` kind): the exact and the reduced decode,
    in the fair loop and in ``cn-annotate canny`` with 1 and N workers, and how far the maps are apart."""
    from bench.decode import map_agreement
    from bench.photos import make_camera_photos

    paths = make_camera_photos(workdir / f"camera-{args.camera}", args.camera, "mosaic")
    photos = paths[0].parent
    loops = {"bare loop, exact decode": bare_loop, "bare loop, reduced decode": bare_reduced_loop}
    builds = {
        (decode, workers): (f"cn-annotate canny, {decode}, {workers} w", ("--decode", decode))
        for decode in ("exact", "reduced")
        for workers in sorted({1, args.workers})
    }
    seconds: dict[str, float] = {}
    for _ in range(args.repeat):  # interleaved, so that a busy spell on a shared machine hits all alike
        for name, loop in loops.items():
            seconds[name] = min(seconds.get(name, float("inf")), loop(paths))
        for (decode, workers), (name, extra) in builds.items():
            run = cn_annotate(photos, workdir / f"camera-out-{decode}-{workers}", workers, extra=extra)
            seconds[name] = min(seconds.get(name, float("inf")), run["seconds"])
    bare = seconds["bare loop, exact decode"]
    print(f"camera photos: {len(paths)} JPEGs of 4032x3024 to {RESOLUTION} (best of {args.repeat})")
    print(f"{'method':<38} {'images':>6} {'seconds':>8} {'images/s':>9} {'vs bare':>8}")
    for name, value in seconds.items():
        print(f"{name:<38} {len(paths):>6} {value:>8.2f} {len(paths) / value:>9.1f} {bare / value:>7.2f}x")
    exact, reduced = (canny_maps(workdir / f"camera-out-{decode}-1") for decode in ("exact", "reduced"))
    names = sorted(exact)
    scores = map_agreement([exact[n] for n in names], [reduced[n] for n in names])
    print(f"maps, reduced against exact decode: {scores['equal']:.2%} of pixels equal, edge F1 {scores['f1']:.3f} ({scores['f1_1px']:.3f} within 1 px)")
    if args.camera_large:
        # Peak RSS at M/10 and at M images, the same photos again and again as hard links: regular
        # files that take no more disk. The default (exact) decode, whose workers hold the most.
        runs = []
        for count in (args.camera_large // 10, args.camera_large):
            links = workdir / f"camera-links-{count}"
            if not links.is_dir():
                links.mkdir()
                for index in range(count):
                    os.link(paths[index % len(paths)], links / f"{index:05d}.jpg")
            runs.append(cn_annotate(links, workdir / "camera-out-rss", args.workers))
        small, big = runs
        for key, label in (("main_rss_kb", "main process"), ("worker_rss_kb", "largest worker")):
            print(
                f"peak RSS, camera photos, {label}: {small[key] / 1024:.0f} MiB at {args.camera_large // 10} images, "
                f"{big[key] / 1024:.0f} MiB at {args.camera_large} ({big[key] / small[key] - 1:+.1%}, target within 10%)"
            )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="photos in the comparison (default: 500; 1500 with --engine ray)")
    parser.add_argument("--large", type=int, default=5000, help="photos in the peak-RSS run (0: skip it)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="N, the workers of the parallel run")
    parser.add_argument("--ready", action="store_true", help="photos already at training size: no resize, no re-encoding")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timed variant; the best counts")
    parser.add_argument("--workdir", type=Path, default=None, help="where photos and outputs go (default: a temporary folder)")
    parser.add_argument("--pose-images", type=int, default=100, help="photos in the mediapipe_pose comparison (0: skip it)")
    parser.add_argument("--baseline", metavar="REV", default=None, help="also run this git revision's builder, side by side (see above)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: compare the Ray engine with the local one instead")
    parser.add_argument("--camera", type=int, default=60, help="camera-size photos in the decoding comparison (0: skip it)")
    parser.add_argument("--camera-large", type=int, default=0, help="M: peak RSS with camera photos at M/10 and M images, hard links to the --camera ones (0: skip it)")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cn-annotate-bench-"))
    if args.engine == "ray":
        try:
            ray_comparison(args, workdir)
        finally:
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
        return
    if args.images is None:
        args.images = 500
    try:
        if args.camera:
            camera_comparison(args, workdir)
        kind = "ready" if args.ready else "photos"
        photos = workdir / f"{kind}-{args.images}"
        if not photos.is_dir():
            make_photos(photos, args.images, ready=args.ready)
        paths = sorted(photos.glob("*.jpg"))
        rows: list[tuple[str, int, float, dict[str, float] | None]] = []
        bare = stored = parallel = float("inf")
        one: dict[str, float] = {"seconds": float("inf")}
        many: dict[str, float] = {"seconds": float("inf")}
        versus: dict[str, dict[str, float]] = {}  # the --baseline comparison, best of the repeats
        old = checkout(args.baseline, workdir / f"baseline-{args.baseline}") if args.baseline else None
        photographs = skimage_photographs(workdir / "skimage-photographs") if old else None
        for _ in range(args.repeat):  # interleaved, so that a busy spell on a shared machine hits all alike
            bare = min(bare, bare_loop(paths))
            stored = min(stored, bare_loop(paths, store_resized=True))
            parallel = min(parallel, parallel_stored_loops(paths, args.workers))
            one = min(one, cn_annotate(photos, workdir / "out-1", 1), key=run_seconds)
            many = min(many, cn_annotate(photos, workdir / f"out-{args.workers}", args.workers), key=run_seconds)
            if old is not None and photographs is not None:
                runs = {
                    "canny, previous": cn_annotate(photos, workdir / "old-canny", 1, src=old),
                    "canny, now": cn_annotate(photos, workdir / "new-canny", 1),
                    "canny, now, --image-format png": cn_annotate(photos, workdir / "new-canny-png", 1, extra=("--image-format", "png")),
                    "hough, previous": cn_annotate(photographs, workdir / "old-hough", 1, "hough", src=old),
                    "hough, now": cn_annotate(photographs, workdir / "new-hough", 1, "hough"),
                }
                for name, run in runs.items():
                    versus[name] = min(versus.get(name, {"cpu_seconds": float("inf")}), run, key=lambda r: r["cpu_seconds"])
        rows.append(("bare loop (cv2)", len(paths), bare, None))
        rows.append(("bare loop + JPEG of resized, decoded", len(paths), stored, None))
        rows.append((f"{args.workers} of those in parallel", len(paths), parallel, None))
        rows.append(("controlnet_aux style loop", len(paths), aux_style_loop(paths), None))
        rows.append(("cn-annotate canny, 1 worker", len(paths), one["seconds"], one))
        rows.append((f"cn-annotate canny, {args.workers} workers", len(paths), many["seconds"], many))
        pose_rows = []
        if args.pose_images:
            pose_photos = workdir / f"{kind}-pose-{args.pose_images}"
            if not pose_photos.is_dir():
                pose_photos.mkdir(parents=True)
                for path in paths[: args.pose_images]:
                    shutil.copy(path, pose_photos / path.name)
            pose_paths = sorted(pose_photos.glob("*.jpg"))
            pose_rows.append(("mediapipe_pose one at a time", len(pose_paths), pose_loop(pose_paths), None))
            pose_run = cn_annotate(pose_photos, workdir / "out-pose", args.workers, "mediapipe_pose")
            pose_rows.append((f"cn-annotate mediapipe_pose, {args.workers} w", len(pose_paths), pose_run["seconds"], pose_run))
        large = None
        if args.large:
            big = workdir / f"{kind}-{args.large}"
            if not big.is_dir():
                make_photos(big, args.large, ready=args.ready)
            large = cn_annotate(big, workdir / "out-large", args.workers)
            rows.append((f"cn-annotate canny, {args.workers} workers", args.large, large["seconds"], large))

        print(f"{'method':<34} {'images':>6} {'seconds':>8} {'images/s':>9} {'vs bare':>8} {'main RSS':>9} {'worker RSS':>10}")
        bare_rate = len(paths) / bare
        for name, count, seconds, stats in rows:
            rate = count / seconds
            main_rss = f"{stats['main_rss_kb'] / 1024:.0f} MiB" if stats else "-"
            worker_rss = f"{stats['worker_rss_kb'] / 1024:.0f} MiB" if stats and stats["worker_rss_kb"] else "-"
            print(f"{name:<34} {count:>6} {seconds:>8.2f} {rate:>9.1f} {rate / bare_rate:>7.2f}x {main_rss:>9} {worker_rss:>10}")

        if pose_rows:
            loop_rate = pose_rows[0][1] / pose_rows[0][2]
            print(f"{'':<34} {'':>6} {'':>8} {'':>9} {'vs loop':>8}")
            for name, count, seconds, stats in pose_rows:
                rate = count / seconds
                main_rss = f"{stats['main_rss_kb'] / 1024:.0f} MiB" if stats else "-"
                worker_rss = f"{stats['worker_rss_kb'] / 1024:.0f} MiB" if stats and stats["worker_rss_kb"] else "-"
                print(f"{name:<34} {count:>6} {seconds:>8.2f} {rate:>9.1f} {rate / loop_rate:>7.2f}x {main_rss:>9} {worker_rss:>10}")

        if versus:
            print()
            print(f"against {args.baseline}, 1 worker each (the process's own CPU time, steadier than wall time on a shared machine), best of {args.repeat}; ratio < 1 is faster")
            print(f"{'builder':<34} {'images':>6} {'wall s':>8} {'CPU s':>8} {'vs prev':>8} {'data MiB':>9} {'pairs agree':>12} {'edge F1':>8}")
            outputs = {"canny, previous": "old-canny", "canny, now": "new-canny", "canny, now, --image-format png": "new-canny-png", "hough, previous": "old-hough", "hough, now": "new-hough"}
            for name, run in versus.items():
                previous = versus[name.split(",")[0] + ", previous"]
                count = len(paths) if name.startswith("canny") else len(list(photographs.iterdir()))  # type: ignore[union-attr]
                agree, f1 = "-", "-"
                if name.startswith("canny"):
                    agreeing, _, mean_f1 = pairs_agree(workdir / outputs[name])
                    agree, f1 = f"{agreeing}/{count}", f"{mean_f1:.3f}"
                print(
                    f"{name:<34} {count:>6} {run['seconds']:>8.2f} {run['cpu_seconds']:>8.2f} {run['cpu_seconds'] / previous['cpu_seconds']:>7.2f}x"
                    f" {data_mib(workdir / outputs[name]):>9.1f} {agree:>12} {f1:>8}"
                )

        print()
        ratio_one = (len(paths) / one["seconds"]) / bare_rate
        ratio_many = (len(paths) / many["seconds"]) / bare_rate
        # The per-core targets are set on photos that need no resize; with a resize, the bound is the
        # loop that also stores the resized photo (its row above), not the bare loop.
        one_target = " (target >= 0.95x)" if args.ready else ""
        many_target = " (target >= 1.8x with 2 workers)" if args.ready and args.workers == 2 else ""
        print(f"1 worker vs bare loop: {ratio_one:.2f}x{one_target}")
        print(f"{args.workers} workers vs bare loop: {ratio_many:.2f}x{many_target}")
        if large is not None:
            for key, label in (("main_rss_kb", "main process"), ("worker_rss_kb", "largest worker")):
                if many[key] and large[key]:
                    growth = large[key] / many[key] - 1
                    print(f"peak RSS, {label}: {many[key] / 1024:.0f} MiB at {len(paths)} images, {large[key] / 1024:.0f} MiB at {args.large} ({growth:+.1%}, target within 10%)")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
