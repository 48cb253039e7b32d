"""ControlNet training on diffusers and accelerate, with the ControlNet paper's recipe built in.

Recipe (Zhang, Rao and Agrawala, "Adding Conditional Control to Text-to-Image Diffusion Models",
ICCV 2023): the ControlNet is a trainable copy of the UNet encoder joined by zero convolutions
(``ControlNetModel.from_unet``); Stable Diffusion stays locked; half of the prompts are replaced by
the empty string so the ControlNet learns to read the condition alone; AdamW at lr 1e-5. The
paper's large-scale option also trains the UNet decoder (``unlock_decoder``, its own lower learning
rate); its small-scale option feeds only the middle block (``only_mid_control``).

The same call runs on one device or many: start it with ``accelerate launch`` (or ``torchrun``) and
each process trains on its slice of every global batch.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "cn_train_config.json"


class TrainError(RuntimeError):
    """A training run cannot start or continue (bad option, missing checkpoint, missing package)."""


@dataclass
class TrainConfig:
    base_model: str
    dataset: str
    output_dir: str = "controlnet-out"
    revision: str | None = None
    variant: str | None = None
    init_controlnet: str | None = None
    # How a new ControlNet's zero convolutions start: "zero" (the paper), or "gaussian" for the
    # paper's ablation of standard Gaussian-initialised convolutions in their place.
    controlnet_init: Literal["zero", "gaussian"] = "zero"
    # Data
    split: str = "train"
    dataset_revision: str | None = None
    image_column: str = "image"
    conditioning_column: str = "conditioning_image"
    caption_column: str = "text"
    id_column: str = "file_name"
    streaming: bool = False
    shuffle_buffer: int = 1000
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = False
    dataloader_workers: int = 0
    empty_prompt_prob: float = 0.5
    # Recipe
    unlock_decoder: bool = False
    decoder_learning_rate: float = 2e-6
    only_mid_control: bool = False
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = False
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    max_steps: int = 10_000
    seed: int = 0
    # Checkpoints
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume: str | None = None
    # Validation and logging
    validation_steps: int = 500
    validation_conditions: list[str] = field(default_factory=list)
    validation_prompts: list[str] = field(default_factory=list)
    num_validation_rows: int = 2
    num_validation_images: int = 2
    validation_inference_steps: int = 20
    report_to: str | None = "tensorboard"
    log_samples: bool = False
    # Every N steps, score the validation samples against their rows' conditions (cn-eval's measures).
    eval_every: int = 0

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.empty_prompt_prob <= 1.0, "empty_prompt_prob must be in [0, 1]"),
            (self.resolution > 0 and self.resolution % 8 == 0, "resolution must be a positive multiple of 8"),
            (self.train_batch_size >= 1, "train_batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.max_steps >= 0, "max_steps must be >= 0 (0 saves the initial ControlNet)"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision must be no, fp16 or bf16"),
            (self.controlnet_init in ("zero", "gaussian"), "controlnet_init must be zero or gaussian"),
            (
                not (self.init_controlnet and self.controlnet_init != "zero"),
                "controlnet_init applies to a new ControlNet, not to one given by init_controlnet",
            ),
            (self.checkpointing_steps >= 0, "checkpointing_steps must be >= 0 (0 disables)"),
            (self.validation_steps >= 0, "validation_steps must be >= 0 (0 disables)"),
            (self.eval_every >= 0, "eval_every must be >= 0 (0 disables)"),
            (
                not (self.eval_every and self.validation_conditions),
                "eval_every scores samples of the dataset's rows, whose conditions it knows; it cannot score validation_conditions",
            ),
            (not (self.unlock_decoder and self.only_mid_control), "unlock_decoder and only_mid_control exclude each other"),
            (
                not self.validation_prompts or len(self.validation_prompts) in (1, len(self.validation_conditions)),
                "give one validation prompt, or one per validation condition",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainError(message)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    global_step: int
    output_dir: Path
    controlnet_dir: Path
    losses: list[float]  # one per optimizer step run in this call
    steps_per_second: float | None  # over the steps of this call, after the first (warm-up) one
    peak_memory_bytes: int | None  # accelerator memory; None on CPU


ProgressCallback = Callable[[int, dict[str, float]], None]


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _resume_dir(config: TrainConfig, output_dir: Path) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "latest":
        found = _checkpoints(output_dir)
        return found[-1] if found else None  # nothing yet: start fresh, so one command serves both
    path = Path(config.resume)
    if not (path / STATE_FILE).is_file():
        raise TrainError(f"{path} is not a cn-train checkpoint (no {STATE_FILE})")
    return path


def _conditioning_channels(vae_downsampling: int) -> tuple[int, ...]:
    """The paper's hint encoder (16, 32, 96, 256) downsamples 8x to the latent size; a VAE that
    downsamples less (tiny test models) gets the matching prefix of it."""
    levels = int(math.log2(vae_downsampling)) + 1
    if 2 ** (levels - 1) != vae_downsampling or levels > 4:
        raise TrainError(f"unsupported VAE downsampling factor {vae_downsampling}")
    return (16, 32, 96, 256)[:levels]


def _gaussian_connections(controlnet: Any, seed: int) -> None:
    """Give the convolutions that ``ControlNetModel.from_unet`` zeroes (the ones feeding the UNet's
    skip connections and middle block, and the condition encoder's last one, all ``zero_module`` in
    the original code) weights drawn from N(0, 1/fan_in), the variance-preserving init of a standard
    convolution, and zero biases."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    layers = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for layer in layers:
            fan_in = layer.weight[0].numel()
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(fan_in))
            layer.bias.zero_()


def _make_optimizer(config: TrainConfig, groups: list[dict[str, Any]]) -> Any:
    import torch

    kwargs = {"betas": (config.adam_beta1, config.adam_beta2), "weight_decay": config.adam_weight_decay, "eps": config.adam_epsilon}
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise TrainError("--use-8bit-adam needs bitsandbytes: pip install bitsandbytes") from error
        return bnb.optim.AdamW8bit(groups, lr=config.learning_rate, **kwargs)
    return torch.optim.AdamW(groups, lr=config.learning_rate, **kwargs)


def _grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Rows of same-size HxWx3 images tiled into one image."""
    return np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)


class _Trainer:
    def __init__(self, config: TrainConfig, progress: ProgressCallback | None) -> None:
        self.config = config
        self.progress = progress
        self.output_dir = Path(config.output_dir)

    # --- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
        from diffusers import (
            AutoencoderKL,
            ControlNetModel,
            DDPMScheduler,
            UNet2DConditionModel,
        )
        from diffusers.optimization import get_scheduler
        from transformers import AutoTokenizer, CLIPTextModel

        c = self.config
        for role, source in (("base model", c.base_model), ("dataset", c.dataset), ("init ControlNet", c.init_controlnet)):
            if source and source.startswith(("/", ".", "~")) and not Path(source).expanduser().exists():
                raise TrainError(f"{role} {source} does not exist")
        self.accelerator = accelerator = Accelerator(
            gradient_accumulation_steps=c.gradient_accumulation_steps,
            mixed_precision=c.mixed_precision,
            log_with=c.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            # With only_mid_control the down-block zero convolutions get no gradient at all.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=c.only_mid_control)],
        )
        self.device = accelerator.device
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.output_dir.glob(f"{CHECKPOINT_PREFIX}*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed run mid-save
        accelerator.wait_for_everyone()

        load = {"revision": c.revision}
        self.tokenizer = AutoTokenizer.from_pretrained(c.base_model, subfolder="tokenizer", revision=c.revision)
        self.noise_scheduler = DDPMScheduler.from_pretrained(c.base_model, subfolder="scheduler", **load)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.mixed_precision, torch.float32)
        frozen = {"variant": c.variant, "torch_dtype": self.weight_dtype, **load}
        self.text_encoder = CLIPTextModel.from_pretrained(c.base_model, subfolder="text_encoder", **frozen)
        self.vae = AutoencoderKL.from_pretrained(c.base_model, subfolder="vae", **frozen)
        # Loaded in float32 so that the ControlNet copies the encoder weights without rounding.
        self.unet = UNet2DConditionModel.from_pretrained(c.base_model, subfolder="unet", variant=c.variant, **load)
        if c.init_controlnet and Path(c.init_controlnet).is_file():
            from controlnet.training.export import load_original_controlnet

            self.controlnet = load_original_controlnet(c.init_controlnet)
        elif c.init_controlnet:
            self.controlnet = ControlNetModel.from_pretrained(c.init_controlnet)
        else:
            downsampling = 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.controlnet = ControlNetModel.from_unet(
                self.unet, conditioning_embedding_out_channels=_conditioning_channels(downsampling)
            )
            if c.controlnet_init == "gaussian":
                _gaussian_connections(self.controlnet, c.seed)

        for model in (self.vae, self.text_encoder, self.unet):
            model.requires_grad_(False)
            model.eval()
            model.to(self.device)
        if not c.unlock_decoder and self.weight_dtype != torch.float32:
            self.unet.to(dtype=self.weight_dtype)  # a trained decoder keeps float32 weights under autocast
        self.controlnet.to(self.device)
        if self.controlnet.dtype != torch.float32:
            self.controlnet.to(dtype=torch.float32)
        self.controlnet.train()
        groups = [{"params": list(self.controlnet.parameters()), "lr": c.learning_rate}]
        if c.unlock_decoder:
            decoder = [self.unet.up_blocks, self.unet.conv_norm_out, self.unet.conv_out]
            decoder_params = [p for module in decoder for p in module.parameters()]
            for p in decoder_params:
                p.requires_grad_(True)
            groups.append({"params": decoder_params, "lr": c.decoder_learning_rate})
            self.unet.train()
        if c.gradient_checkpointing:
            # The locked UNet needs it too: the loss backpropagates through it into the residuals.
            self.controlnet.enable_gradient_checkpointing()
            self.unet.enable_gradient_checkpointing()

        optimizer = _make_optimizer(c, groups)
        # Stepped by us once per optimizer step (not prepared: accelerate would step it per process).
        self.lr_scheduler = get_scheduler(
            c.lr_scheduler, optimizer=optimizer, num_warmup_steps=c.lr_warmup_steps, num_training_steps=c.max_steps
        )
        if c.unlock_decoder:
            self.controlnet, self.unet, self.optimizer = accelerator.prepare(self.controlnet, self.unet, optimizer)
            self.trained = (self.controlnet, self.unet)
        else:
            self.controlnet, self.optimizer = accelerator.prepare(self.controlnet, optimizer)
            self.trained = (self.controlnet,)
        accelerator.register_for_checkpointing(self.lr_scheduler)
        self.trainable_params = [p for g in groups for p in g["params"]]

        rank = accelerator.process_index
        self.generator = torch.Generator(device=self.device).manual_seed(c.seed * 1_000_003 + rank)
        self.global_step = 0
        from controlnet.training.data import Position

        self.position = Position()
        resume_dir = _resume_dir(c, self.output_dir)
        if resume_dir is not None:
            self.load_checkpoint(resume_dir)

    def batches(self) -> Any:
        from controlnet.training.data import (
            Columns,
            PairTransform,
            load_rows,
            map_batches,
            stream_batches,
        )

        c = self.config
        rows = load_rows(c.dataset, c.split, c.dataset_revision, c.streaming)
        transform = PairTransform(c.resolution, c.center_crop, c.random_flip)
        columns = Columns(c.image_column, c.conditioning_column, c.caption_column, c.id_column)
        common = {
            "transform": transform, "columns": columns, "empty_prompt_prob": c.empty_prompt_prob, "seed": c.seed,
            "batch_size": c.train_batch_size, "rank": self.accelerator.process_index,
            "world_size": self.accelerator.num_processes, "start": self.position,
        }
        self.rows = rows
        if c.streaming:
            return stream_batches(rows, shuffle_buffer=c.shuffle_buffer, **common)
        return map_batches(rows, workers=c.dataloader_workers, **common)

    # --- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        import torch

        accelerator = self.accelerator
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{self.global_step}"
        staging = final.with_name(final.name + ".tmp")
        accelerator.save_state(str(staging))
        rank = accelerator.process_index
        torch.save(
            {"generator": self.generator.get_state(), "epoch": self.position.epoch, "batch": self.position.batch},
            staging / f"data_rng_{rank}.pt",
        )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (staging / STATE_FILE).write_text(json.dumps({"global_step": self.global_step}))
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)  # a checkpoint dir without .tmp is always complete
            limit = self.config.checkpoints_total_limit
            if limit:
                for old in _checkpoints(self.output_dir)[:-limit]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def load_checkpoint(self, path: Path) -> None:
        import torch

        from controlnet.training.data import Position

        self.accelerator.load_state(str(path))
        self.global_step = json.loads((path / STATE_FILE).read_text())["global_step"]
        state = torch.load(path / f"data_rng_{self.accelerator.process_index}.pt", weights_only=True)
        self.generator.set_state(state["generator"])
        self.position = Position(int(state["epoch"]), int(state["batch"]))

    # --- training --------------------------------------------------------------------------------

    def encode_prompts(self, captions: list[str]) -> Any:
        import torch

        ids = self.tokenizer(
            captions, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        with torch.no_grad():
            return self.text_encoder(ids)[0]

    def loss(self, batch: dict[str, Any]) -> Any:
        import torch
        import torch.nn.functional as F

        pixels = batch["pixel_values"].to(self.device, dtype=self.weight_dtype)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample(generator=self.generator)
            latents = latents * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=self.generator, device=self.device, dtype=latents.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=self.generator, device=self.device).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        text = self.encode_prompts(batch["captions"])
        cond = batch["conditioning_pixel_values"].to(self.device, dtype=self.weight_dtype)
        down, mid = self.controlnet(noisy, timesteps, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        if self.config.only_mid_control:
            down = [torch.zeros_like(d) for d in down]
        prediction = self.unet(
            noisy,
            timesteps,
            encoder_hidden_states=text,
            down_block_additional_residuals=[d.to(self.weight_dtype) for d in down],
            mid_block_additional_residual=mid.to(self.weight_dtype),
            return_dict=False,
        )[0]
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise TrainError(f"unsupported prediction type {kind!r}")
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")

    def run(self) -> TrainResult:
        import torch

        c, accelerator = self.config, self.accelerator
        if accelerator.is_main_process:
            (self.output_dir / CONFIG_FILE).write_text(json.dumps(c.to_json(), indent=2))
        if c.report_to:
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in c.to_json().items()}
            accelerator.init_trackers("cn-train", config=hparams)
        sample_log = None
        if c.log_samples and accelerator.is_main_process:
            sample_log = (self.output_dir / "samples.jsonl").open("a", encoding="utf-8")
        batches = self.batches()
        if self.global_step == 0 and (c.validation_steps or c.eval_every):
            self.validate(0)
        losses: list[float] = []
        step_losses, step_ids = [], []
        times: list[float] = []
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        while self.global_step < c.max_steps:
            batch, next_position = next(batches)
            with accelerator.accumulate(*self.trained):
                loss = self.loss(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and c.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(self.trainable_params, c.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.position = next_position
            step_losses.append(loss.detach())
            step_ids.extend(batch["sample_ids"])
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:
                self.lr_scheduler.step()
            self.global_step += 1
            mean_loss = accelerator.reduce(torch.stack(step_losses).mean(), reduction="mean").item()
            ids = step_ids
            if c.log_samples and accelerator.num_processes > 1:
                from accelerate.utils import gather_object

                ids = gather_object(step_ids)
            step_losses, step_ids = [], []
            losses.append(mean_loss)
            times.append(time.perf_counter())
            logs = {"loss": mean_loss, "lr": self.lr_scheduler.get_last_lr()[0]}
            accelerator.log(logs, step=self.global_step)
            if sample_log is not None:
                record = {"step": self.global_step, "ids": ids, "loss": mean_loss, "lr": logs["lr"]}
                sample_log.write(json.dumps(record) + "\n")
                sample_log.flush()
            if self.progress is not None and accelerator.is_main_process:
                self.progress(self.global_step, logs)
            if c.checkpointing_steps and self.global_step % c.checkpointing_steps == 0:
                self.save_checkpoint()
            if any(every and self.global_step % every == 0 for every in (c.validation_steps, c.eval_every)):
                self.validate(self.global_step)
        if sample_log is not None:
            sample_log.close()
        controlnet_dir = self.save_final()
        accelerator.end_training()
        speed = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        return TrainResult(self.global_step, self.output_dir, controlnet_dir, losses, speed, peak)

    def save_final(self) -> Path:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        controlnet_dir = self.output_dir / "controlnet"
        if accelerator.is_main_process:
            accelerator.unwrap_model(self.controlnet).save_pretrained(controlnet_dir, safe_serialization=True)
            if self.config.unlock_decoder:
                accelerator.unwrap_model(self.unet).save_pretrained(self.output_dir / "unet", safe_serialization=True)
        accelerator.wait_for_everyone()
        return controlnet_dir

    # --- validation ------------------------------------------------------------------------------

    def validation_cases(self) -> list[tuple[np.ndarray, str]]:
        from PIL import Image

        c = self.config
        if c.validation_conditions:
            prompts = c.validation_prompts or [""]
            if len(prompts) == 1:
                prompts = prompts * len(c.validation_conditions)
            images = [np.asarray(Image.open(p).convert("RGB")) for p in c.validation_conditions]
            return list(zip(images, prompts))
        if c.streaming:
            rows = list(self.rows.take(c.num_validation_rows))
        else:
            rows = [self.rows[i] for i in range(min(c.num_validation_rows, len(self.rows)))]
        self._validation_rows = rows  # for --eval-every, which scores samples against their rows
        return [(np.asarray(r[c.conditioning_column].convert("RGB")), str(r[c.caption_column] or "")) for r in rows]

    def half_copy(self, model: Any) -> Any:
        copy = type(model).from_config(model.config)
        copy.load_state_dict(model.state_dict())
        return copy.to(self.device, dtype=self.weight_dtype).eval()

    def validate(self, step: int) -> None:
        import torch
        from diffusers import StableDiffusionControlNetPipeline, UniPCMultistepScheduler
        from PIL import Image

        accelerator = self.accelerator
        if not accelerator.is_main_process:
            accelerator.wait_for_everyone()
            return
        c = self.config
        if not hasattr(self, "_validation_cases"):
            self._validation_cases = self.validation_cases()
        controlnet = accelerator.unwrap_model(self.controlnet)
        unet = accelerator.unwrap_model(self.unet)
        if self.weight_dtype != torch.float32:
            # Sample wholly in the half dtype of the frozen models, from half copies of the trained
            # float32 weights: autocast does not cover every op on every device (group norm on CPU),
            # and the prepared model's forward carries accelerate's autocast wrapper.
            controlnet = self.half_copy(controlnet)
            if self.config.unlock_decoder:
                unet = self.half_copy(unet)
        pipeline = StableDiffusionControlNetPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet, controlnet=controlnet,
            scheduler=UniPCMultistepScheduler.from_config(self.noise_scheduler.config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        size = c.resolution
        rows, made = [], []
        was_training = controlnet.training
        controlnet.eval()
        for index, (condition, prompt) in enumerate(self._validation_cases):
            cond_image = Image.fromarray(condition).resize((size, size), Image.Resampling.BILINEAR)
            generator = torch.Generator(device=self.device).manual_seed(c.seed + index)
            with torch.no_grad():
                out = pipeline(
                    prompt, image=cond_image, num_inference_steps=c.validation_inference_steps, generator=generator,
                    num_images_per_prompt=c.num_validation_images, height=size, width=size, output_type="np",
                ).images
            samples = [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in out]
            rows.append([np.asarray(cond_image), *samples])
            made.append(samples)
        controlnet.train(was_training)
        if c.eval_every and step % c.eval_every == 0:
            self.log_condition_following(step, made)
        grid = _grid(rows)
        folder = self.output_dir / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(folder / f"step-{step:06d}.png")
        if self.config.report_to == "tensorboard":
            tracker = accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_image("validation", grid, step, dataformats="HWC")
        accelerator.wait_for_everyone()


    def log_condition_following(self, step: int, samples: list[list[np.ndarray]]) -> None:
        """Log how well the validation samples follow their rows' conditions (``eval/<metric>``)."""
        from controlnet.evaluation.training import ValidationScorer

        c = self.config
        if not hasattr(self, "_scorer"):
            try:
                self._scorer = ValidationScorer(c.dataset, c.dataset_revision, c.conditioning_column, str(self.device))
            except ValueError as error:
                raise TrainError(str(error)) from None
        self.accelerator.log(self._scorer(self._validation_rows, samples), step=step)


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Train a ControlNet as ``config`` says; ``progress(step, logs)`` is called after each step."""
    from accelerate.state import AcceleratorState, GradientState

    trainer = _Trainer(config, progress)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        # accelerate keeps its settings (mixed precision, accumulation) in process-wide singletons;
        # clear them so that a later train() call in this process may use other ones. The
        # distributed state (process group) is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
