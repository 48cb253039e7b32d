"""Sampling from Stable Diffusion with one or more ControlNets, to see what a ControlNet learned.

Conditions come from images (annotated first when a ControlNet names an annotator), or from the
rows of a cn-annotate dataset (``dataset``): each row's condition and caption make one prompt's
samples, with the seed ``seed + row position``. Every run writes ``manifest.jsonl`` (see
:mod:`controlnet.manifest`), which links each sample to its condition, prompt, seed, guidance and
ControlNets, so that ``cn-eval`` can score it.

Several ControlNets make a MultiControlNet: their residuals are summed, each times its own scale.
Guess mode follows the original ControlNet code: the unconditional half of classifier-free guidance
gets no control, and the residual of block ``i`` of ``n`` is scaled by ``0.825 ** (n - 1 - i)``
(``0.825 ** (12 - i)`` for Stable Diffusion's 13 residuals), so deep features dominate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from controlnet.manifest import ConditionRecord, ManifestEntry, write_manifest

GUESS_MODE_BASE = 0.825


class SampleError(ValueError):
    """Options that cannot be sampled (mismatched counts, unreadable ControlNet)."""


def guess_mode_scales(count: int) -> list[float]:
    """The original code's guess-mode scales for ``count`` residuals, the middle block's last."""
    return [GUESS_MODE_BASE ** float(count - 1 - i) for i in range(count)]


@dataclass
class ControlNetSpec:
    path: str
    scale: float = 1.0
    # Image mode: annotate the raw image with this annotator id first. Dataset mode: take the
    # condition that this annotator made in the dataset (None: the conditioning_image column).
    annotator: str | None = None
    only_mid_control: bool = False  # trained with --only-mid-control: drop the down-block residuals


@dataclass
class SampleConfig:
    base_model: str
    controlnets: list[ControlNetSpec]
    images: list[str] = field(default_factory=list)  # one per ControlNet, or one shared by all; none with a dataset
    prompt: str | None = None  # None: "" for images, each row's caption for a dataset
    negative_prompt: str = ""
    output_dir: str = "samples"
    revision: str | None = None
    variant: str | None = None
    steps: int = 20
    guidance: float = 7.5
    seed: int = 0
    batch: int = 1
    guess_mode: bool = False
    control_start: float = 0.0
    control_end: float = 1.0
    width: int | None = None  # default: the first condition's size, rounded down to a multiple of 8
    height: int | None = None
    device: str | None = None  # default: cuda when available
    dtype: str = "auto"  # "auto" (float16 on cuda, float32 on cpu), "float32", "float16", "bfloat16"
    # Dataset mode: the conditions and captions of the first ``limit`` rows of a split.
    dataset: str | None = None
    split: str = "train"
    limit: int | None = None
    dataset_revision: str | None = None
    caption_column: str = "text"

    def __post_init__(self) -> None:
        if not self.controlnets:
            raise SampleError("give at least one ControlNet")
        if self.dataset is not None:
            if self.images:
                raise SampleError("give condition images or a dataset, not both")
            if self.limit is not None and self.limit < 1:
                raise SampleError("limit must be >= 1")
        elif len(self.images) not in (1, len(self.controlnets)):
            raise SampleError(f"give one image, or one per ControlNet ({len(self.controlnets)}); got {len(self.images)}")
        if not 0.0 <= self.control_start < self.control_end <= 1.0:
            raise SampleError("need 0 <= control_start < control_end <= 1")
        if self.steps < 1 or self.batch < 1:
            raise SampleError("steps and batch must be >= 1")


@dataclass
class SampleResult:
    images: list[np.ndarray]  # image mode only: a dataset's samples can be many, and are on disk
    conditions: list[np.ndarray]
    paths: list[Path] = field(default_factory=list)
    grid_path: Path | None = None  # image mode only
    manifest_path: Path | None = None


def _control_class() -> type:
    from diffusers import ControlNetModel
    from diffusers.models.controlnets.controlnet import ControlNetOutput

    class PaperControlNet(ControlNetModel):
        """A ``ControlNetModel`` whose guess mode uses the original code's scales, and which can
        feed only the middle block."""

        only_mid_control = False

        def forward(self, *args: Any, conditioning_scale: float = 1.0, guess_mode: bool = False,
                    return_dict: bool = True, **kwargs: Any) -> Any:
            paper_guess = guess_mode and not self.config.global_pool_conditions
            down, mid = super().forward(
                *args, conditioning_scale=conditioning_scale, guess_mode=guess_mode and not paper_guess,
                return_dict=False, **kwargs,
            )
            if paper_guess:
                scales = guess_mode_scales(len(down) + 1)
                down = [d * s for d, s in zip(down, scales)]
                mid = mid * scales[-1]
            if self.only_mid_control:
                down = [d * 0 for d in down]
            if not return_dict:
                return down, mid
            return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)

    return PaperControlNet


def load_controlnet(spec: ControlNetSpec, dtype: Any) -> Any:
    """A diffusers ControlNet folder or Hub id, or a single original-layout ``.safetensors`` file."""
    from controlnet.training.export import load_original_controlnet

    cls = _control_class()
    path = Path(spec.path)
    if path.is_file():
        model = load_original_controlnet(path, cls)
        if model.dtype != dtype:
            model.to(dtype=dtype)
    else:
        model = cls.from_pretrained(spec.path, torch_dtype=dtype)
    model.only_mid_control = spec.only_mid_control
    return model


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _conditions(config: SampleConfig) -> tuple[list[np.ndarray], list[ConditionRecord]]:
    """The condition of each ControlNet from the images, annotated where asked, with their records
    (the condition image itself is named when it is written)."""
    import annotators

    raw = [_read_rgb(p) for p in config.images]
    if len(raw) == 1:
        raw = raw * len(config.controlnets)
    conditions, records = [], []
    for image, spec in zip(raw, config.controlnets):
        params = None
        if spec.annotator:
            annotator = annotators.create(spec.annotator)
            image = annotator([image])[0]
            params = annotator.config.identity()
        conditions.append(image)
        records.append(ConditionRecord(spec.path, spec.scale, spec.annotator, params))
    return conditions, records


def _resolve_device(config: SampleConfig) -> tuple[str, Any]:
    import torch

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if config.dtype == "auto":
        return device, torch.float16 if device.startswith("cuda") else torch.float32
    if config.dtype not in names:
        raise SampleError(f"dtype must be auto or one of {', '.join(names)}")
    return device, names[config.dtype]


def _load_pipeline(config: SampleConfig, device: str, dtype: Any) -> Any:
    from diffusers import StableDiffusionControlNetPipeline, UniPCMultistepScheduler

    models = [load_controlnet(spec, dtype) for spec in config.controlnets]
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        config.base_model, controlnet=models[0] if len(models) == 1 else models, revision=config.revision,
        variant=config.variant, torch_dtype=dtype, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.scheduler = UniPCMultistepScheduler.from_config(pipeline.scheduler.config)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate(pipeline: Any, config: SampleConfig, device: str, conditions: list[np.ndarray], prompt: str, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``config.batch`` images for one prompt, and the conditions as the pipeline received them."""
    import torch
    from PIL import Image

    height, width = conditions[0].shape[:2]
    width = config.width or max(8, width // 8 * 8)
    height = config.height or max(8, height // 8 * 8)
    cond_images = [Image.fromarray(c).resize((width, height), Image.Resampling.BILINEAR) for c in conditions]
    single = len(cond_images) == 1
    scales = [spec.scale for spec in config.controlnets]
    generator = torch.Generator(device=device).manual_seed(seed)
    output = pipeline(
        prompt,
        image=cond_images[0] if single else cond_images,
        negative_prompt=config.negative_prompt or None,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        num_images_per_prompt=config.batch,
        generator=generator,
        height=height,
        width=width,
        controlnet_conditioning_scale=scales[0] if single else scales,
        guess_mode=config.guess_mode,
        control_guidance_start=config.control_start,
        control_guidance_end=config.control_end,
        output_type="np",
    ).images
    images = [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in output]
    return images, [np.asarray(c) for c in cond_images]


def _entry(config: SampleConfig, sample: str, prompt: str, seed: int, index: int, conditions: tuple[ConditionRecord, ...], **where: Any) -> ManifestEntry:
    return ManifestEntry(
        sample=sample, prompt=prompt, seed=seed, index=index, guidance=config.guidance, steps=config.steps,
        base_model=config.base_model, conditions=conditions, negative_prompt=config.negative_prompt,
        extra={"guess_mode": config.guess_mode, "control_start": config.control_start, "control_end": config.control_end},
        **where,
    )


def sample(config: SampleConfig) -> SampleResult:
    """Generate and write ``config.batch`` images per prompt, with ``manifest.jsonl``: for condition
    images one prompt and a grid (conditions | samples); for a dataset one prompt per row."""
    from PIL import Image

    device, dtype = _resolve_device(config)
    folder = Path(config.output_dir)
    if config.dataset is not None:
        return _sample_dataset(config, device, dtype, folder)
    conditions, records = _conditions(config)
    pipeline = _load_pipeline(config, device, dtype)
    prompt = config.prompt or ""
    images, cond_images = _generate(pipeline, config, device, conditions, prompt, config.seed)

    folder.mkdir(parents=True, exist_ok=True)
    for index, (condition, record) in enumerate(zip(cond_images, records)):
        Image.fromarray(condition).save(folder / f"condition-{index}.png")
        records[index] = replace(record, image=f"condition-{index}.png")
    paths, entries = [], []
    for index, image in enumerate(images):
        paths.append(folder / f"sample-{index:03d}.png")
        Image.fromarray(image).save(paths[-1])
        entries.append(_entry(config, paths[-1].name, prompt, config.seed, index, tuple(records)))
    grid = np.concatenate([*cond_images, *images], axis=1)
    grid_path = folder / "grid.png"
    Image.fromarray(grid).save(grid_path)
    return SampleResult(images, cond_images, paths, grid_path, write_manifest(folder, entries))


def _sample_name(file_name: Any, position: int, index: int, batch: int) -> str:
    """The row's ``file_name`` with a .png suffix (``-<index>`` before it when a prompt has several
    samples), so that samples pair with rows by name; the row position when it has none."""
    stem = Path(str(file_name)).with_suffix("") if file_name else Path(f"{position:05d}")
    if stem.is_absolute() or ".." in stem.parts:
        stem = Path(f"{position:05d}")
    return f"{stem.as_posix()}.png" if batch == 1 else f"{stem.as_posix()}-{index}.png"


def _sample_dataset(config: SampleConfig, device: str, dtype: Any, folder: Path) -> SampleResult:
    from PIL import Image

    from controlnet.dataset.read import DatasetReadError, condition_columns, load_build, load_rows

    assert config.dataset is not None
    try:
        rows = load_rows(config.dataset, config.split, config.dataset_revision)
        build = load_build(config.dataset, config.dataset_revision)
        built_by = list(build["annotators"]) if build else []
        sources = []  # (column, annotator) per ControlNet
        for spec in config.controlnets:
            if spec.annotator is None:
                sources.append(("conditioning_image", built_by[0] if built_by else None))
            elif not built_by:
                raise SampleError(f"dataset {config.dataset} has no build.json saying which column {spec.annotator} made")
            else:
                sources.append((condition_columns(built_by, spec.annotator).map, spec.annotator))
    except DatasetReadError as err:
        raise SampleError(str(err)) from None
    for column, _ in sources:
        if column not in rows.column_names:
            raise SampleError(f"dataset {config.dataset} has no column {column!r}")
    pipeline = _load_pipeline(config, device, dtype)
    records = tuple(ConditionRecord(spec.path, spec.scale, annotator, column=column) for spec, (column, annotator) in zip(config.controlnets, sources))
    count = len(rows) if config.limit is None else min(config.limit, len(rows))
    paths, entries = [], []
    for position in range(count):
        row = rows[position]
        conditions = [np.asarray(row[column].convert("RGB")) for column, _ in sources]
        prompt = config.prompt if config.prompt is not None else str(row.get(config.caption_column) or "")
        seed = config.seed + position
        images, _ = _generate(pipeline, config, device, conditions, prompt, seed)
        for index, image in enumerate(images):
            name = _sample_name(row.get("file_name"), position, index, config.batch)
            paths.append(folder / name)
            paths[-1].parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(paths[-1])
            entries.append(_entry(
                config, name, prompt, seed, index, records,
                dataset=config.dataset, split=config.split, row=position, file_name=row.get("file_name"),
            ))
    folder.mkdir(parents=True, exist_ok=True)
    return SampleResult([], [], paths, None, write_manifest(folder, entries))
