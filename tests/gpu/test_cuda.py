"""The CUDA paths against the CPU: every neural annotator in float32 (exactly comparable with TF32
off), TF32 and half precision (looser), batched against one image at a time, the dataset builder's
central GPU annotator, and the trainer in fp16 and bf16. Skipped where no CUDA device is present.

Agreement is the fraction of map pixels equal to the CPU float32 map (within a few grey levels for
reduced precision), as the parity tests measure final maps; every test prints what it measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import annotators
from annotators.neural import NeuralAnnotator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICE = "cuda"
NEURAL = [name for name in annotators.names() if issubclass(annotators.get_class(name), NeuralAnnotator)]

# With TF32 off, CUDA float32 differs from the CPU only in summation order, as two CPUs do: the same
# share of identical pixels as the parity tests ask of CPU maps against the reference. M-LSD draws whole
# segments, so a segment whose score sits at the threshold moves a line of pixels (98.8% seen on an H200).
FLOAT32_AGREEMENT = 0.995
FLOAT32_AGREEMENT_BY_NAME = {"mlsd": 0.98}
# TF32 and half precision round to 10 (float16, TF32) or 7 (bfloat16) mantissa bits. Seeded random
# weights amplify rounding far more than trained ones (MiDaS' ViT and PiDiNet most; the global min-max
# of depth maps then shifts every pixel), and no trained weights can be checked offline, so these floors,
# set under what an H200 gave on 2026-11-26 (worst pixels within LEVELS: TF32 82%, float16 66%,
# bfloat16 50%, all on depth_midas), catch a broken path (a wrong cast, garbage maps), not quality.
LEVELS = 8
INK_FACTOR = 4.0
REDUCED: dict[str, tuple[str, bool, float]] = {  # precision -> dtype, TF32, pixels within LEVELS
    "tf32": ("float32", True, 0.75),
    "float16": ("float16", False, 0.60),
    "bfloat16": ("bfloat16", False, 0.45),
}


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for cuDNN convolutions and cuBLAS matmuls (cuDNN's default is on), restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def agreement(actual: list[np.ndarray], expected: list[np.ndarray], levels: int = 0) -> list[float]:
    """Per map, the fraction of pixels within ``levels`` grey levels of the expected map."""
    fractions = []
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == np.uint8 and a.shape == e.shape, (a.dtype, a.shape, e.shape)
        fractions.append(float((np.abs(a.astype(np.int16) - e) <= levels).mean()))
    return fractions


def summary(fractions: list[float]) -> str:
    return "worst {:.4%}, per image ".format(min(fractions)) + " ".join(f"{f:.4%}" for f in fractions)


@pytest.fixture(scope="module")
def images(photos: list[np.ndarray]) -> list[np.ndarray]:
    """Seven crops of photographs in three shapes: a batch of 4 holds a full group of one shape, then its
    remainder, an odd size the networks pad, and a portrait one."""
    astronaut, coffee, chelsea, camera = photos
    crops = [astronaut[0:144, 150:342], coffee[60:204, 180:372], chelsea[40:184, 120:312], astronaut[260:404, 40:232], coffee[200:344, 300:492]]
    return [np.ascontiguousarray(c) for c in (*crops, chelsea[100:231, 200:397], camera[40:232, 100:244])]


@pytest.fixture(scope="module")
def runs(images: list[np.ndarray], seeded_weights):
    """Per annotator, computed once: maps on the CPU in float32, and on CUDA batched by 4 in each
    precision, plus CUDA float32 one image at a time."""
    cache: dict[str, dict[str, list[np.ndarray]]] = {}

    def run(name: str) -> dict[str, list[np.ndarray]]:
        if name not in cache:
            maps = {"cpu": seeded_weights.create(name)(images)}
            annotator = seeded_weights.create(name, device=DEVICE, batch_size=4)
            with tf32(False):
                maps["float32"] = annotator(images)
                maps["float32 one by one"] = [annotator([image])[0] for image in images]
            for precision, (dtype, allow_tf32, _) in REDUCED.items():
                if dtype != "float32":
                    annotator = seeded_weights.create(name, device=DEVICE, dtype=dtype, batch_size=4)
                with tf32(allow_tf32):
                    maps[precision] = annotator(images)
            cache[name] = maps
        return cache[name]

    return run


@pytest.mark.parametrize("name", NEURAL)
def test_cuda_float32_matches_cpu(name: str, runs) -> None:
    fractions = agreement(runs(name)["float32"], runs(name)["cpu"])
    threshold = FLOAT32_AGREEMENT_BY_NAME.get(name, FLOAT32_AGREEMENT)
    print(f"{name} cuda float32 vs cpu, identical pixels: {summary(fractions)}")
    assert min(fractions) >= threshold, f"{name}: identical pixels {summary(fractions)} < {threshold:.1%}"


@pytest.mark.parametrize("name", NEURAL)
def test_cuda_batches_of_mixed_shapes_match_one_by_one(name: str, runs) -> None:
    fractions = agreement(runs(name)["float32"], runs(name)["float32 one by one"])
    print(f"{name} cuda float32 batch of 4 vs one by one, identical pixels: {summary(fractions)}")
    assert min(fractions) >= FLOAT32_AGREEMENT, f"{name}: identical pixels {summary(fractions)} < {FLOAT32_AGREEMENT:.1%}"


@pytest.mark.parametrize("precision", list(REDUCED))
@pytest.mark.parametrize("name", NEURAL)
def test_cuda_reduced_precision_is_close_to_cpu_float32(name: str, precision: str, images: list[np.ndarray], runs) -> None:
    maps = runs(name)[precision]
    assert [m.shape for m in maps] == [i.shape for i in images]
    fractions = agreement(maps, runs(name)["cpu"], LEVELS)
    exact = agreement(maps, runs(name)["cpu"])
    threshold = REDUCED[precision][2]
    # Sparse maps (lines, skeletons) are mostly black, so a blank map would pass the share above:
    # their drawn pixels must also stay within a factor INK_FACTOR of the float32 map's.
    ink = [float((m > 0).mean() / max((e > 0).mean(), 1e-9)) for m, e in zip(maps, runs(name)["cpu"], strict=True)]
    print(f"{name} cuda {precision} vs cpu float32, within {LEVELS} levels: {summary(fractions)}; identical: {summary(exact)}; "
          f"drawn pixels, ratio: " + " ".join(f"{r:.2f}" for r in ink))
    assert min(fractions) >= threshold, f"{name} {precision}: pixels within {LEVELS} levels {summary(fractions)} < {threshold:.0%}"
    assert all(1 / INK_FACTOR <= r <= INK_FACTOR for r in ink), f"{name} {precision}: drawn pixels against float32 {ink}"


def test_dwpose_on_cuda_matches_cpu(images: list[np.ndarray], seeded_weights) -> None:
    """DWPose's onnxruntime graphs on the CUDA provider (needs onnxruntime-gpu), crops of the batch
    sharing runs, against the CPU image by image; the stand-in graphs are the parity case's."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    cpu = seeded_weights.create("dw_openpose_full").annotate(images)
    gpu = seeded_weights.create("dw_openpose_full", device=DEVICE, batch_size=4).annotate(images)
    fractions = agreement([g.map for g in gpu], [c.map for c in cpu])
    print(f"dw_openpose_full cuda vs cpu, identical pixels: {summary(fractions)}")
    assert min(fractions) >= FLOAT32_AGREEMENT, f"dw_openpose_full: identical pixels {summary(fractions)} < {FLOAT32_AGREEMENT:.1%}"
    assert [len(g.data["people"]) for g in gpu] == [len(c.data["people"]) for c in cpu]


# --------------------------------------------------------------------------- dataset builder


def read_dataset(output: Path) -> dict[str, dict[str, object]]:
    """Rows of a built dataset by file name, read with pyarrow (``datasets`` is not needed)."""
    import pyarrow.parquet as pq

    from controlnet.dataset.build import shard_paths

    rows = [row for path in shard_paths(output) for row in pq.read_table(path).to_pylist()]
    return {row["file_name"]: row for row in rows}


def decode_map(cell: dict[str, bytes]) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(cell["bytes"], np.uint8), cv2.IMREAD_UNCHANGED)


def test_builder_with_central_gpu_annotators_matches_cpu_build(tmp_path: Path, seeded_weights) -> None:
    from controlnet.dataset.build import BuildConfig, build
    from tests.controlnet.helpers import write_photo

    photos = tmp_path / "photos"
    for index in range(10):  # JPEGs of two sizes, more than one batch of 4: the worker pool runs
        write_photo(photos / f"{index:02d}.jpg", index, *((96, 80) if index % 3 else (120, 72)))
    names = ("softedge_hed", "normal_bae", "openpose")  # grey, colour, and a keypoint-finding annotator

    def dataset(device: str, workers: int) -> dict[str, dict[str, object]]:
        specs = tuple((name, seeded_weights.create(name, device=device, batch_size=4).config) for name in names)
        config = BuildConfig(input=str(photos), output=tmp_path / device, annotators=specs, keep_size=True, workers=workers)
        assert config.is_central == (device != "cpu")
        with tf32(False):
            result = build(config)
        assert (result.rows, result.skipped) == (10, 0)
        return read_dataset(config.output)

    cpu, gpu = dataset("cpu", 1), dataset(DEVICE, 2)
    assert sorted(gpu) == sorted(cpu)
    for column in ("conditioning_image", *names):
        fractions = agreement([decode_map(gpu[f][column]) for f in sorted(cpu)], [decode_map(cpu[f][column]) for f in sorted(cpu)])
        print(f"builder {column} cuda vs cpu, identical pixels: {summary(fractions)}")
        assert min(fractions) >= FLOAT32_AGREEMENT, f"{column}: identical pixels {summary(fractions)} < {FLOAT32_AGREEMENT:.1%}"
    for file_name, row in gpu.items():
        assert row["image"]["bytes"] == cpu[file_name]["image"]["bytes"]
        assert row["keypoints"] is not None


# --------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    pytest.importorskip("datasets")
    from controlnet.testing import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def canny_dataset(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    from PIL import Image

    from controlnet.testing import write_dataset

    small = []
    for photo in photos:
        image = Image.fromarray(photo)
        image.thumbnail((64, 64))
        small.append(np.asarray(image))
    return write_dataset(tmp_path_factory.mktemp("canny-ds"), small, ["an astronaut", "coffee", "a cat", "a camera"])


@pytest.mark.parametrize("mixed_precision", ["fp16", "bf16"])
def test_trainer_runs_on_cuda_in_mixed_precision(mixed_precision: str, tiny_base: Path, canny_dataset: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from controlnet.training.trainer import TrainConfig, train

    config = TrainConfig(
        base_model=str(tiny_base), dataset=str(canny_dataset), output_dir=str(tmp_path), resolution=32,
        train_batch_size=2, max_steps=4, mixed_precision=mixed_precision, learning_rate=1e-4,
        checkpointing_steps=2, validation_steps=4, validation_inference_steps=2, num_validation_rows=1,
        num_validation_images=1, report_to=None,
    )
    result = train(config)
    print(f"trainer {mixed_precision}: losses {result.losses}, peak memory {result.peak_memory_bytes}")
    assert result.global_step == 4 and len(result.losses) == 4
    assert all(math.isfinite(loss) for loss in result.losses), result.losses
    assert result.peak_memory_bytes  # the models ran on the GPU
    assert (tmp_path / "checkpoint-4" / "trainer_state.json").is_file()
    assert (tmp_path / "validation" / "step-000004.png").is_file()
    weights = load_file(result.controlnet_dir / "diffusion_pytorch_model.safetensors")
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in weights.values())
