"""Batched neural annotators against a one-image-at-a-time loop of the same network.

    OMP_NUM_THREADS=1 python bench/neural.py                       # CPU, 64 images at 512
    python bench/neural.py --device cuda --dtype float16           # GPU: fp16 batched vs fp32 loop
    python bench/neural.py --annotators softedge_hed --images 16   # a quicker look
    python bench/neural.py --annotators dw_openpose_full --repeats 5   # best of 5 runs each, on a busy machine
    OMP_NUM_THREADS=1 python bench/neural.py --annotators seg_ufade20k,seg_ofade20k --images 4   # segmentation
    python bench/neural.py --annotators depth_anything_v2,depth_zoe --images 4   # ViT-L / BEiT-L: slow on a CPU
    python bench/neural.py --annotators depth_anything_v2 --set depth_anything_v2.encoder=vits

Weights are seeded stand-ins for the published checkpoints (rebuilt from shared/parity), so the
figures measure speed only. DWPose runs the parity case's stand-in ONNX graphs, which are far smaller
than the real YOLOX-L and RTMPose-L: its figures measure the pipeline around the graphs (letterbox,
decoding, NMS, crops, drawing), not the networks. Annotators without a ``dtype`` (ONNX) run in their
graphs' precision. The loop baseline does what the reference annotators do: one image per
forward pass, in float32. Targets: on CPU batched >= 1.0x the loop; on CUDA fp16 batched >= 5x the
fp32 loop. Prints images/s and the ratio per annotator, and the ratio of CPU time (on a shared
machine the steadier figure for CPU runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import annotators  # noqa: E402
from tests.parity import SeededWeights  # noqa: E402

DEFAULT_ANNOTATORS = ("softedge_hed", "depth_midas", "openpose", "dw_openpose_full", "softedge_teed")


def photographs(count: int, size: int) -> list[np.ndarray]:
    """``count`` distinct size x size crops of scikit-image's colour photographs."""
    import cv2
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        src = sources[i % len(sources)]
        side = int(rng.integers(min(src.shape[:2]) // 2, min(src.shape[:2]) + 1))
        y = int(rng.integers(0, src.shape[0] - side + 1))
        x = int(rng.integers(0, src.shape[1] - side + 1))
        images.append(cv2.resize(src[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA))
    return images


def images_per_second(annotator: annotators.Annotator, images: list[np.ndarray], one_at_a_time: bool) -> tuple[float, float]:
    """Images per second of wall-clock time, and of this process's CPU time: the steadier figure for
    CPU runs on a shared machine."""
    # Load weights and warm up outside the timing, at the batch size timed: cuDNN and the caching
    # allocator set up per input shape, which would otherwise land in the first timed batch.
    annotator(images[: 1 if one_at_a_time else annotator.config.batch_size])  # type: ignore[attr-defined]
    if annotator.config.device.startswith("cuda"):  # type: ignore[attr-defined]
        import torch

        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    if one_at_a_time:
        for image in images:
            annotator([image])
    else:
        annotator(images)
    if annotator.config.device.startswith("cuda"):  # type: ignore[attr-defined]
        import torch

        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start), len(images) / (time.process_time() - cpu_start)


def create(cls: type[annotators.Annotator], **params: object) -> annotators.Annotator:
    """``cls`` with the params its config has (ONNX annotators take no ``dtype``)."""
    fields = {field.name for field in dataclasses.fields(cls.Config)}
    return cls(**{name: value for name, value in params.items() if name in fields})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", default=",".join(DEFAULT_ANNOTATORS))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="dtype of the batched path; the loop is always float32")
    parser.add_argument("--repeats", type=int, default=1, help="time each path this many times, alternately, and keep the best")
    parser.add_argument("--set", action="append", default=[], metavar="ID.PARAM=VALUE", help="an annotator parameter, e.g. depth_anything_v2.encoder=vits")
    args = parser.parse_args()
    overrides: dict[str, dict[str, object]] = {}
    for item in args.set:
        target, _, value = item.partition("=")
        name, _, key = target.partition(".")
        overrides.setdefault(name, {})[key] = int(value) if value.isdigit() else value

    images = photographs(args.images, args.size)
    print(f"{args.images} images at {args.size}x{args.size}, device {args.device}, batch {args.batch_size} ({args.dtype}) vs loop (float32)")
    print(f"{'annotator':<18}{'loop img/s':>12}{'batched img/s':>15}{'ratio':>8}{'CPU-time ratio':>16}")
    with tempfile.TemporaryDirectory() as folder:
        weights = SeededWeights(Path(folder))
        for name in args.annotators.split(","):
            cls = annotators.get_class(name)
            params = overrides.get(name, {})
            location = str(weights.location(cls(**params).weights))  # which files may depend on the parameters
            loop = create(cls, weights=location, device=args.device, dtype="float32", batch_size=1, **params)
            batched = create(cls, weights=location, device=args.device, dtype=args.dtype, batch_size=args.batch_size, **params)
            # Alternating runs, best of each: on a shared machine one run can be half as fast as another.
            loop_rate = batched_rate = 0.0
            loop_cpu = batched_cpu = 0.0  # images per second of CPU time
            for _ in range(args.repeats):
                rate, cpu = images_per_second(loop, images, one_at_a_time=True)
                loop_rate, loop_cpu = max(loop_rate, rate), max(loop_cpu, cpu)
                rate, cpu = images_per_second(batched, images, one_at_a_time=False)
                batched_rate, batched_cpu = max(batched_rate, rate), max(batched_cpu, cpu)
            print(
                f"{name:<18}{loop_rate:>12.3g}{batched_rate:>15.3g}{batched_rate / loop_rate:>7.2f}x{batched_cpu / loop_cpu:>15.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
