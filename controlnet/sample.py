"""Sampling from Stable Diffusion (SD 1.x/2.x or SDXL) with one or more ControlNets, to see what a
ControlNet learned. The base model's family picks the pipeline (see :mod:`controlnet.bases`).

Several ControlNets make a MultiControlNet: their residuals are summed, each times its own scale.
Guess mode follows the original ControlNet code: the unconditional half of classifier-free guidance
gets no control, and the residual of block ``i`` of ``n`` is scaled by ``0.825 ** (n - 1 - i)``
(``0.825 ** (12 - i)`` for Stable Diffusion's 13 residuals), so deep features dominate.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annotators.base import param, range_error
from controlnet.dtypes import DTYPE_NAMES

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
    annotator: str | None = param(None, "annotate the raw image with this annotator id first; none: use it as it is (repeatable)")
    only_mid_control: bool = param(False, "the ControlNets were trained with --only-mid-control: drop the down-block residuals")


@dataclass
class SampleConfig:
    """A sample run. Each field declared with ``param()`` is a ``cn-sample`` option of the same name."""

    base_model: str = param(MISSING, "diffusers pipeline folder or Hub id: SD 1.x/2.x or SDXL")
    controlnets: list[ControlNetSpec] = field(default_factory=list)
    images: tuple[str, ...] = param((), "condition image, or raw image with --annotator (repeatable: one, or one per ControlNet)")
    prompt: str = param("", "prompt")
    negative_prompt: str = param("", "negative prompt")
    output_dir: str = param("samples", "folder for sample-*.png and grid.png")
    revision: str | None = param(None, "base model revision")
    variant: str | None = param(None, "base model weights variant")
    vae: str | None = param(None, "a separate VAE folder or Hub id, e.g. an fp16-fixed SDXL VAE")
    steps: int = param(20, "sampling steps", ge=1)
    guidance: float = param(7.5, "classifier-free guidance scale", ge=0.0)
    seed: int = param(0, "seed")
    batch: int = param(1, "images to generate", ge=1)
    guess_mode: bool = param(False, "no prompt needed: the paper's 0.825**(12-i) scales, no control on the unconditional half")
    control_start: float = param(0.0, "fraction of steps where control starts", ge=0.0, le=1.0)
    control_end: float = param(1.0, "fraction of steps where control ends", ge=0.0, le=1.0)
    width: int | None = param(None, "output width (default: the condition's, rounded down to a multiple of 8)", ge=8)
    height: int | None = param(None, "output height (default: the condition's, rounded down to a multiple of 8)", ge=8)
    device: str | None = param(None, "cuda, cpu, ... (default: cuda when available)")
    dtype: str = param("auto", "auto: float16 on cuda, float32 on cpu", choices=("auto", *DTYPE_NAMES))

    def __post_init__(self) -> None:
        self.images = tuple(self.images)
        if not self.controlnets:
            raise SampleError("give at least one ControlNet")
        if len(self.images) not in (1, len(self.controlnets)):
            raise SampleError(f"give one image, or one per ControlNet ({len(self.controlnets)}); got {len(self.images)}")
        out_of_range = range_error(self)
        if out_of_range:
            raise SampleError(out_of_range)
        if not self.control_start < self.control_end:
            raise SampleError("need 0 <= control_start < control_end <= 1")


@dataclass
class SampleResult:
    images: list[np.ndarray]
    conditions: list[np.ndarray]
    paths: list[Path] = field(default_factory=list)
    grid_path: Path | None = None


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


def _conditions(config: SampleConfig) -> list[np.ndarray]:
    import annotators
    from annotators.image import load_image

    raw = [load_image(p) for p in config.images]
    if len(raw) == 1:
        raw = raw * len(config.controlnets)
    conditions = []
    for image, spec in zip(raw, config.controlnets):
        conditions.append(annotators.create(spec.annotator)([image])[0] if spec.annotator else image)
    return conditions


def _resolve_device(config: SampleConfig) -> tuple[str, Any]:
    import torch

    from controlnet.dtypes import torch_dtype

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.dtype == "auto":
        return device, torch.float16 if device.startswith("cuda") else torch.float32
    return device, torch_dtype(config.dtype)


def sample(config: SampleConfig) -> SampleResult:
    """Generate ``config.batch`` images and write them, with a grid (conditions | samples)."""
    import torch
    from diffusers import UniPCMultistepScheduler
    from PIL import Image

    from controlnet.bases import UnsupportedBaseError, load_base

    try:
        base = load_base(config.base_model, config.revision, config.variant)
    except UnsupportedBaseError as error:
        raise SampleError(str(error)) from None
    device, dtype = _resolve_device(config)
    conditions = _conditions(config)
    height, width = conditions[0].shape[:2]
    width = config.width or max(8, width // 8 * 8)
    height = config.height or max(8, height // 8 * 8)
    cond_images = [Image.fromarray(c).resize((width, height), Image.Resampling.BILINEAR) for c in conditions]

    models = [load_controlnet(spec, dtype) for spec in config.controlnets]
    single = len(models) == 1
    scheduler = base.load_scheduler(UniPCMultistepScheduler)
    pipeline = base.pipeline(base.load_parts(dtype, config.vae), models[0] if single else models, scheduler)
    pipeline.to(device)
    scales = [spec.scale for spec in config.controlnets]
    generator = torch.Generator(device=device).manual_seed(config.seed)
    output = pipeline(
        config.prompt,
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

    folder = Path(config.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        paths.append(folder / f"sample-{index:03d}.png")
        Image.fromarray(image).save(paths[-1])
    grid = np.concatenate([*(np.asarray(c) for c in cond_images), *images], axis=1)
    grid_path = folder / "grid.png"
    Image.fromarray(grid).save(grid_path)
    return SampleResult(images, [np.asarray(c) for c in cond_images], paths, grid_path)
