"""Sampling from Stable Diffusion (SD 1.x/2.x or SDXL) with one or more ControlNets, to see what a
ControlNet learned. The base model's family picks the pipeline (see :mod:`controlnet.bases`).

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

from dataclasses import MISSING, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from annotators.base import param, range_error
from controlnet.dtypes import DTYPE_NAMES
from controlnet.manifest import ConditionRecord, ManifestEntry, write_manifest

GUESS_MODE_BASE = 0.825


class SampleError(ValueError):
    """Options that cannot be sampled (mismatched counts, unreadable ControlNet)."""


def guess_mode_scales(count: int) -> list[float]:
    """The original code's guess-mode scales for ``count`` residuals, the middle block's last."""
    return [GUESS_MODE_BASE ** float(count - 1 - i) for i in range(count)]


@dataclass
class ControlNetSpec:
    """One ControlNet of a sample run. ``cn-sample`` takes one ``--controlnet`` per spec; its other
    options pair with the ControlNets in order."""

    path: str = param(MISSING, "ControlNet folder, Hub id or single .safetensors file (repeatable)")
    scale: float = param(1.0, "conditioning scale (repeatable)")
    # Image mode: annotate the raw image with this annotator id first. Dataset mode: take the
    # condition that this annotator made in the dataset (None: the conditioning_image column).
    annotator: str | None = param(
        None, "annotate the image first (none: use it as it is); with --dataset: the dataset annotator whose condition to use (repeatable)"
    )
    only_mid_control: bool = param(False, "the ControlNets were trained with --only-mid-control: drop the down-block residuals")


@dataclass
class SampleConfig:
    """A sample run. Each field declared with ``param()`` is a ``cn-sample`` option of the same name."""

    base_model: str = param(MISSING, "diffusers pipeline folder or Hub id: SD 1.x/2.x or SDXL")
    controlnets: list[ControlNetSpec] = field(default_factory=list)
    images: tuple[str, ...] = param((), "condition image, or raw image with --annotator (repeatable: one, or one per ControlNet)")
    prompt: str | None = param(None, 'prompt (default: "" for images; with --dataset each row\'s caption, or this for every row)')
    negative_prompt: str = param("", "negative prompt")
    output_dir: str = param("samples", "folder for the samples, manifest.jsonl and (images) grid.png")
    revision: str | None = param(None, "base model revision")
    variant: str | None = param(None, "base model weights variant")
    vae: str | None = param(None, "a separate VAE folder or Hub id, e.g. an fp16-fixed SDXL VAE")
    steps: int = param(20, "sampling steps", ge=1)
    guidance: float = param(7.5, "classifier-free guidance scale", ge=0.0)
    seed: int = param(0, "seed (with --dataset: seed + row position)")
    batch: int = param(1, "images to generate per prompt", ge=1)
    guess_mode: bool = param(False, "no prompt needed: the paper's 0.825**(12-i) scales, no control on the unconditional half")
    control_start: float = param(0.0, "fraction of steps where control starts", ge=0.0, le=1.0)
    control_end: float = param(1.0, "fraction of steps where control ends", ge=0.0, le=1.0)
    width: int | None = param(None, "output width (default: the condition's, rounded down to a multiple of 8)", ge=8)
    height: int | None = param(None, "output height (default: the condition's, rounded down to a multiple of 8)", ge=8)
    device: str | None = param(None, "cuda, cpu, ... (default: cuda when available)")
    dtype: str = param("auto", "auto: float16 on cuda, float32 on cpu", choices=("auto", *DTYPE_NAMES))
    # Dataset mode: the conditions and captions of the first ``limit`` rows of a split.
    dataset: str | None = param(None, "sample the conditions and captions of this cn-annotate dataset's rows (folder or Hub id)")
    split: str = param("train", "dataset split")
    limit: int | None = param(None, "sample the first N rows of the split (default: all)", ge=1)
    dataset_revision: str | None = param(None, "dataset revision (Hub)")
    caption_column: str = param("text", "dataset column of the prompts")

    def __post_init__(self) -> None:
        self.images = tuple(self.images)
        if not self.controlnets:
            raise SampleError("give at least one ControlNet")
        if self.dataset is not None:
            if self.images:
                raise SampleError("give condition images or a dataset, not both")
        elif len(self.images) not in (1, len(self.controlnets)):
            raise SampleError(
                f"give one image, or one per ControlNet ({len(self.controlnets)}), or a dataset; got {len(self.images)} images"
            )
        out_of_range = range_error(self)
        if out_of_range:
            raise SampleError(out_of_range)
        if not self.control_start < self.control_end:
            raise SampleError("need 0 <= control_start < control_end <= 1")


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
    """A diffusers ControlNet folder or Hub id, or a single ``.safetensors`` file (either layout)."""
    from controlnet.dtypes import cast, dtype_keyword
    from controlnet.training.export import load_controlnet_file

    cls = _control_class()
    path = Path(spec.path)
    if path.is_file():
        model = load_controlnet_file(path, cls)
        if model.dtype != dtype:
            cast(model, dtype)
    else:
        model = cls.from_pretrained(spec.path, **dtype_keyword(dtype))
    model.only_mid_control = spec.only_mid_control
    return model


def _conditions(config: SampleConfig) -> tuple[list[np.ndarray], list[ConditionRecord]]:
    """The condition of each ControlNet from the images, annotated where asked, with their records
    (the condition image itself is named when it is written)."""
    import annotators
    from annotators.image import load_image

    raw = [load_image(p) for p in config.images]
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

    from controlnet.dtypes import torch_dtype

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.dtype == "auto":
        return device, torch.float16 if device.startswith("cuda") else torch.float32
    return device, torch_dtype(config.dtype)


def _load_base(config: SampleConfig) -> Any:
    from controlnet.bases import UnsupportedBaseError, load_base

    try:
        return load_base(config.base_model, config.revision, config.variant)
    except UnsupportedBaseError as error:
        raise SampleError(str(error)) from None


def _load_pipeline(config: SampleConfig, base: Any, device: str, dtype: Any) -> Any:
    """The base family's ControlNet pipeline, assembled as the trainer's validation assembles it."""
    from diffusers import UniPCMultistepScheduler

    models = [load_controlnet(spec, dtype) for spec in config.controlnets]
    scheduler = base.load_scheduler(UniPCMultistepScheduler)
    pipeline = base.pipeline(base.load_parts(dtype, config.vae), models[0] if len(models) == 1 else models, scheduler)
    pipeline.to(device)
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

    base = _load_base(config)
    device, dtype = _resolve_device(config)
    folder = Path(config.output_dir)
    if config.dataset is not None:
        return _sample_dataset(config, base, device, dtype, folder)
    conditions, records = _conditions(config)
    pipeline = _load_pipeline(config, base, device, dtype)
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


def _sample_dataset(config: SampleConfig, base: Any, device: str, dtype: Any, folder: Path) -> SampleResult:
    from PIL import Image

    from controlnet.dataset.read import (
        DatasetReadError,
        condition_columns,
        load_build,
        load_rows,
    )
    from controlnet.training.data import decode, undecoded

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
    rows = undecoded(rows, [column for column, _ in sources])
    pipeline = _load_pipeline(config, base, device, dtype)
    records = tuple(ConditionRecord(spec.path, spec.scale, annotator, column=column) for spec, (column, annotator) in zip(config.controlnets, sources))
    count = len(rows) if config.limit is None else min(config.limit, len(rows))
    paths, entries = [], []
    for position in range(count):
        row = rows[position]
        conditions = [decode(row[column], column) for column, _ in sources]
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
