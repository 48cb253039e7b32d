"""Sampling from Stable Diffusion with one or more ControlNets, to see what a ControlNet learned.

Several ControlNets make a MultiControlNet: their residuals are summed, each times its own scale.
Guess mode follows the original ControlNet code: the unconditional half of classifier-free guidance
gets no control, and the residual of block ``i`` of ``n`` is scaled by ``0.825 ** (n - 1 - i)``
(``0.825 ** (12 - i)`` for Stable Diffusion's 13 residuals), so deep features dominate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    annotator: str | None = None  # annotate the raw image with this annotator id first
    only_mid_control: bool = False  # trained with --only-mid-control: drop the down-block residuals


@dataclass
class SampleConfig:
    base_model: str
    controlnets: list[ControlNetSpec]
    images: list[str]  # one per ControlNet, or one shared by all
    prompt: str = ""
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

    def __post_init__(self) -> None:
        if not self.controlnets:
            raise SampleError("give at least one ControlNet")
        if len(self.images) not in (1, len(self.controlnets)):
            raise SampleError(f"give one image, or one per ControlNet ({len(self.controlnets)}); got {len(self.images)}")
        if not 0.0 <= self.control_start < self.control_end <= 1.0:
            raise SampleError("need 0 <= control_start < control_end <= 1")
        if self.steps < 1 or self.batch < 1:
            raise SampleError("steps and batch must be >= 1")


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


def _conditions(config: SampleConfig) -> list[np.ndarray]:
    import annotators

    raw = [_read_rgb(p) for p in config.images]
    if len(raw) == 1:
        raw = raw * len(config.controlnets)
    conditions = []
    for image, spec in zip(raw, config.controlnets):
        conditions.append(annotators.create(spec.annotator)([image])[0] if spec.annotator else image)
    return conditions


def _resolve_device(config: SampleConfig) -> tuple[str, Any]:
    import torch

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if config.dtype == "auto":
        return device, torch.float16 if device.startswith("cuda") else torch.float32
    if config.dtype not in names:
        raise SampleError(f"dtype must be auto or one of {', '.join(names)}")
    return device, names[config.dtype]


def sample(config: SampleConfig) -> SampleResult:
    """Generate ``config.batch`` images and write them, with a grid (conditions | samples)."""
    import torch
    from diffusers import StableDiffusionControlNetPipeline, UniPCMultistepScheduler
    from PIL import Image

    device, dtype = _resolve_device(config)
    conditions = _conditions(config)
    height, width = conditions[0].shape[:2]
    width = config.width or max(8, width // 8 * 8)
    height = config.height or max(8, height // 8 * 8)
    cond_images = [Image.fromarray(c).resize((width, height), Image.Resampling.BILINEAR) for c in conditions]

    models = [load_controlnet(spec, dtype) for spec in config.controlnets]
    single = len(models) == 1
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        config.base_model, controlnet=models[0] if single else models, revision=config.revision,
        variant=config.variant, torch_dtype=dtype, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.scheduler = UniPCMultistepScheduler.from_config(pipeline.scheduler.config)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
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
