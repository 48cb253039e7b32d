"""ControlNet training on diffusers and accelerate, with the ControlNet paper's recipe built in.

Recipe (Zhang, Rao and Agrawala, "Adding Conditional Control to Text-to-Image Diffusion Models",
ICCV 2023): the ControlNet is a trainable copy of the UNet encoder joined by zero convolutions
(``ControlNetModel.from_unet``); Stable Diffusion stays locked; half of the prompts are replaced by
the empty string so the ControlNet learns to read the condition alone; AdamW at lr 1e-5. The
paper's large-scale option also trains the UNet decoder (``unlock_decoder``, its own lower learning
rate); its small-scale option feeds only the middle block (``only_mid_control``).

The base model's family (SD 1.x/2.x or SDXL, see :mod:`controlnet.bases`) decides how prompts and
image geometry condition the UNet and the ControlNet; the loop here is the same for every family.
Memory recipes: latents and text embeddings cached on disk (:mod:`controlnet.training.cache`),
gradient checkpointing, 8-bit Adam, mixed precision, gradient accumulation.

The same call runs on one device or many: start it with ``accelerate launch`` (or ``torchrun``) and
each process trains on its slice of every global batch.
"""

from __future__ import annotations

import math
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annotators.base import param, range_error
from controlnet.dtypes import cast
from controlnet.training.checkpoints import (
    CHECKPOINT_PREFIX,
    CONFIG_FILE,
    FINAL_FOLDER,
    STATE_FILE,
    RunFolderError,
    checkpoints,
    claim,
    resume_dir,
)

logger = logging.getLogger(__name__)

CACHE_FOLDER = "cache"


class TrainError(RuntimeError):
    """A training run cannot start or continue (bad option, missing checkpoint, missing package)."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Each field declared with ``param()`` is a ``cn-train`` option
    of the same name, with this help text."""

    base_model: str = param(MISSING, "diffusers pipeline folder or Hub id: SD 1.x/2.x or SDXL, told apart by its model_index.json")
    dataset: str = param(MISSING, "cn-annotate dataset folder or Hub id")
    output_dir: str = param("controlnet-out", "run folder: checkpoints, logs, caches, controlnet/")
    overwrite: bool = param(False, "replace an earlier run in the output folder (refused without it)")
    revision: str | None = param(None, "base model revision")
    variant: str | None = param(None, "base model weights variant, e.g. fp16")
    vae: str | None = param(None, "a separate VAE folder or Hub id, e.g. an fp16-fixed SDXL VAE for mixed precision")
    init_controlnet: str | None = param(None, "start from this ControlNet (folder, Hub id or .safetensors) instead of the UNet encoder")
    controlnet_init: str = param("zero", "a new ControlNet's zero convolutions: zero (the paper) or gaussian (the paper's ablation)", choices=("zero", "gaussian"))
    # Data
    split: str = param("train", "dataset split")
    dataset_revision: str | None = param(None, "dataset revision (Hub)")
    image_column: str = param("image", "target image column")
    conditioning_column: str = param("conditioning_image", "condition map column (a multi-annotator dataset has one per annotator id)")
    caption_column: str = param("text", "prompt column")
    id_column: str = param("file_name", "sample id column, logged by --log-samples")
    streaming: bool = param(False, "stream the dataset (larger than RAM)")
    shuffle_buffer: int = param(1000, "shuffle buffer when streaming", ge=1)
    resolution: int = param(512, "train size: the shorter side is resized to it, then a square is cropped (a multiple of 8)", ge=8)
    random_crop: bool = param(False, "random instead of centre crop")
    random_flip: bool = param(False, "flip image and condition together, half the time")
    dataloader_workers: int = param(0, "data-loading worker processes", ge=0)
    empty_prompt_prob: float = param(0.5, 'probability of replacing a prompt by ""', ge=0.0, le=1.0)
    empty_prompt_embedding: str = param(
        "encoded", 'what an empty prompt feeds the model: the text encoders\' encoding of "", or zeros (SDXL\'s unconditional input)',
        choices=("encoded", "zeros"),
    )
    # Recipe
    unlock_decoder: bool = param(False, "also train the UNet decoder (the paper's large-scale option)")
    decoder_learning_rate: float = param(2e-6, "learning rate of the unlocked decoder", gt=0.0)
    only_mid_control: bool = param(False, "feed only the middle block (the paper's small-scale option)")
    learning_rate: float = param(1e-5, "AdamW learning rate of the ControlNet", gt=0.0)
    adam_beta1: float = param(0.9, "AdamW beta1", ge=0.0, lt=1.0)
    adam_beta2: float = param(0.999, "AdamW beta2", ge=0.0, lt=1.0)
    adam_weight_decay: float = param(1e-2, "AdamW weight decay", ge=0.0)
    adam_epsilon: float = param(1e-8, "AdamW epsilon", gt=0.0)
    use_8bit_adam: bool = param(False, "bitsandbytes 8-bit AdamW")
    max_grad_norm: float = param(1.0, "gradient clipping norm (0: off)", ge=0.0)
    lr_scheduler: str = param("constant", "diffusers scheduler name: constant, cosine, linear, ...")
    lr_warmup_steps: int = param(0, "warm-up steps", ge=0)
    train_batch_size: int = param(4, "batch per process", ge=1)
    gradient_accumulation_steps: int = param(1, "micro-batches per optimizer step", ge=1)
    gradient_checkpointing: bool = param(False, "recompute activations in the backward pass to save memory")
    mixed_precision: str = param("no", "precision of the frozen models and of autocast", choices=("no", "fp16", "bf16"))
    cache_latents: bool = param(False, "encode the images with the VAE once, on disk beside the run (needs centre crop, no flip)")
    cache_text_embeddings: bool = param(False, "encode the captions once, on disk beside the run; the text encoders leave the accelerator")
    max_steps: int = param(10_000, "optimizer steps in all (0: save the initial ControlNet)", ge=0)
    seed: int = param(0, "seed of data order, noise and validation")
    # Checkpoints
    checkpointing_steps: int = param(500, "checkpoint every N steps (0: never)", ge=0)
    checkpoints_total_limit: int = param(3, "keep the last K checkpoints (0: all)", ge=0)
    resume: str | None = param(None, "'latest' (the newest checkpoint in the output folder, if any) or a checkpoint folder")
    # Validation and logging
    validation_steps: int = param(500, "sample validation grids every N steps (0: never)", ge=0)
    validation_conditions: tuple[str, ...] = param((), "validation condition image (repeatable; default: the first dataset rows)")
    validation_prompts: tuple[str, ...] = param((), "validation prompt (repeatable: one, or one per condition)")
    num_validation_rows: int = param(2, "dataset rows to validate on when no condition is given", ge=1)
    num_validation_images: int = param(2, "samples per validation condition", ge=1)
    validation_inference_steps: int = param(20, "sampling steps for validation", ge=1)
    report_to: str | None = param("tensorboard", "tensorboard, wandb, ... or none")
    log_samples: bool = param(False, "write samples.jsonl: the sample ids, loss and learning rate of every step")
    eval_every: int = param(0, "every N steps, score how well the validation samples follow their rows' conditions (cn-eval's metrics) and log it (0: never)", ge=0)

    def __post_init__(self) -> None:
        self.validation_conditions = tuple(self.validation_conditions)
        self.validation_prompts = tuple(self.validation_prompts)
        if self.report_to == "none":
            self.report_to = None
        out_of_range = range_error(self)
        if out_of_range:
            raise TrainError(out_of_range)
        checks = [
            (self.resolution % 8 == 0, "resolution must be a multiple of 8"),
            (
                not (self.init_controlnet and self.controlnet_init != "zero"),
                "controlnet_init applies to a new ControlNet, not to one given by init_controlnet",
            ),
            (
                not (self.eval_every and self.validation_conditions),
                "eval_every scores samples of the dataset's rows, whose conditions it knows; it cannot score validation_conditions",
            ),
            (not (self.unlock_decoder and self.only_mid_control), "unlock_decoder and only_mid_control exclude each other"),
            (
                not self.validation_prompts or len(self.validation_prompts) in (1, len(self.validation_conditions)),
                "give one validation prompt, or one per validation condition",
            ),
            (
                not self.cache_latents or not (self.random_crop or self.random_flip),
                "cache_latents needs the same crop every epoch: no random_crop or random_flip",
            ),
            (
                not (self.cache_latents or self.cache_text_embeddings) or not self.streaming,
                "caching latents or text embeddings needs a dataset that is not streamed",
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
    resumed_from: Path | None = None  # the checkpoint this call continued from


ProgressCallback = Callable[[int, dict[str, float]], None]


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
        self.latent_cache: Any = None
        self.text_cache: Any = None
        self.offloaded: list[Any] = []  # frozen models kept off the accelerator between validations
        self.resumed_from: Path | None = None

    # --- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        from controlnet.bases import UnsupportedBaseError, load_base
        from controlnet.dtypes import torch_dtype
        from controlnet.training.data import (
            Columns,
            Position,
            check_columns,
            load_rows,
            undecoded,
        )

        c = self.config
        for role, source in (("dataset", c.dataset), ("init ControlNet", c.init_controlnet), ("VAE", c.vae)):
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
        # Everything that can be refused is checked before a model loads: the run folder, the base
        # model's family, the dataset's columns.
        try:
            claim(self.output_dir, c.resume, c.overwrite, remove=accelerator.is_main_process)
            self.base = load_base(c.base_model, c.revision, c.variant)
        except (RunFolderError, UnsupportedBaseError) as error:
            raise TrainError(str(error)) from None
        self.columns = Columns(c.image_column, c.conditioning_column, c.caption_column, c.id_column)
        rows = load_rows(c.dataset, c.split, c.dataset_revision, c.streaming)
        check_columns(list(rows.column_names) if rows.column_names else None, self.columns)
        self.rows = undecoded(rows, (c.image_column, c.conditioning_column))
        self.decoded_rows = rows
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.output_dir.glob(f"{CHECKPOINT_PREFIX}*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed run mid-save
        accelerator.wait_for_everyone()

        try:
            self.resumed_from = resume_dir(c.resume, self.output_dir)
        except RunFolderError as error:
            raise TrainError(str(error)) from None
        if self.resumed_from is not None:
            self.announce(f"resuming from {self.resumed_from}")
        elif c.resume == "latest":
            self.announce(f"no checkpoint in {self.output_dir} to resume from: starting fresh")

        self.weight_dtype = torch_dtype(c.mixed_precision)
        self.load_models()
        self.prepare_training()
        self.prepare_caches()

        rank = accelerator.process_index
        self.generator = torch.Generator(device=self.device).manual_seed(c.seed * 1_000_003 + rank)
        self.global_step = 0
        self.position = Position()
        if self.resumed_from is not None:
            self.load_checkpoint(self.resumed_from)
            self.announce(f"resumed at step {self.global_step}")

    def load_models(self) -> None:
        import torch
        from diffusers import ControlNetModel, DDPMScheduler

        c = self.config
        self.noise_scheduler = self.base.load_scheduler(DDPMScheduler)
        self.text = self.base.load_text(self.weight_dtype)
        self.vae = self.base.load_vae(self.weight_dtype, c.vae, upcast=True)
        # Loaded in float32 so that the ControlNet copies the encoder weights without rounding.
        self.unet = self.base.load_unet(torch.float32)
        if c.init_controlnet and Path(c.init_controlnet).is_file():
            from controlnet.training.export import load_controlnet_file

            self.controlnet = load_controlnet_file(c.init_controlnet)
        elif c.init_controlnet:
            self.controlnet = ControlNetModel.from_pretrained(c.init_controlnet)
        else:
            downsampling = 2 ** (len(self.vae.config.block_out_channels) - 1)
            if downsampling != 8:
                raise TrainError(f"the base's VAE downsamples {downsampling}x; a ControlNet's condition encoder downsamples 8x")
            # The condition encoder starts from random weights: drawn from the run's seed, not from
            # whatever the global generator holds, so that one seed gives one run.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed)
                self.controlnet = ControlNetModel.from_unet(self.unet)
            if c.controlnet_init == "gaussian":
                _gaussian_connections(self.controlnet, c.seed)
        for model in (self.vae, *self.text.encoders, self.unet):
            model.requires_grad_(False)
            model.eval()
            model.to(self.device)
        if not c.unlock_decoder and self.weight_dtype != torch.float32:
            cast(self.unet, self.weight_dtype)  # a trained decoder keeps float32 weights under autocast

    def prepare_training(self) -> None:
        import torch
        from diffusers.optimization import get_scheduler

        c, accelerator = self.config, self.accelerator
        self.controlnet.to(self.device)
        if self.controlnet.dtype != torch.float32:
            cast(self.controlnet, torch.float32)
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

    def transform(self) -> Any:
        from controlnet.training.data import PairTransform

        c = self.config
        return PairTransform(c.resolution, center_crop=not c.random_crop, random_flip=c.random_flip)

    def prepare_caches(self) -> None:
        """Encode what ``cache_latents`` / ``cache_text_embeddings`` ask for (or find it encoded
        beside the run), then move the models that are no longer needed off the accelerator."""
        from controlnet.training.cache import (
            ShardReader,
            Sync,
            TextCache,
            distinct_captions,
            ensure,
        )

        c, accelerator = self.config, self.accelerator
        if not (c.cache_latents or c.cache_text_embeddings):
            return
        sync = Sync(accelerator.process_index, accelerator.num_processes, accelerator.wait_for_everyone)
        folder = self.output_dir / CACHE_FOLDER
        # The dataset's fingerprint (datasets' own hash of its files and operations) names its content.
        source = {"dataset": self.rows._fingerprint, "split": c.split, "base": c.base_model, "revision": c.revision, "variant": c.variant}
        if c.cache_latents:
            identity = {**source, "image_column": c.image_column, "resolution": c.resolution, "vae": c.vae, "dtype": str(self.vae.dtype)}
            reused = ensure(folder / "latents", identity, len(self.rows), self.encode_images, c.train_batch_size, sync)
            self.latent_cache = ShardReader(folder / "latents")
            self.offload(self.vae)
            self.announce(f"{'reusing' if reused else 'cached'} the latents of {len(self.rows)} images in {folder / 'latents'}")
        if c.cache_text_embeddings:
            identity = {**source, "caption_column": c.caption_column, "family": self.base.family.name, "dtype": str(self.weight_dtype)}
            captions = distinct_captions(self.rows[c.caption_column])
            self.text_cache, reused = TextCache.build(folder / "text", identity, captions, self.encode_captions, c.train_batch_size, sync)
            for encoder in self.text.encoders:
                self.offload(encoder)
            self.announce(f"{'reusing' if reused else 'cached'} the embeddings of {len(captions)} captions in {folder / 'text'}")

    def announce(self, message: str) -> None:
        if self.accelerator.is_main_process:
            logger.info(message)

    def offload(self, model: Any) -> None:
        model.to("cpu")
        self.offloaded.append(model)

    @contextlib.contextmanager
    def offloaded_on_device(self) -> Iterator[None]:
        """The offloaded models back on the accelerator, for as long as validation samples."""
        for model in self.offloaded:
            model.to(self.device)
        try:
            yield
        finally:
            for model in self.offloaded:
                model.to("cpu")

    def encode_images(self, items: range) -> dict[str, Any]:
        import torch

        from controlnet.training.data import cropped_images

        pixels = cropped_images(self.rows, items, self.transform(), self.columns)
        with torch.no_grad():
            return {"parameters": self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist.parameters}

    def encode_captions(self, captions: list[str]) -> dict[str, Any]:
        prompt = self.base.family.encode(self.text, captions, self.device)
        return {"hidden": prompt.hidden} if prompt.pooled is None else {"hidden": prompt.hidden, "pooled": prompt.pooled}

    def batches(self) -> Any:
        from controlnet.training.data import map_batches, stream_batches

        c = self.config
        common = {
            "transform": self.transform(), "columns": self.columns, "empty_prompt_prob": c.empty_prompt_prob,
            "seed": c.seed, "batch_size": c.train_batch_size, "rank": self.accelerator.process_index,
            "world_size": self.accelerator.num_processes, "start": self.position,
        }
        if c.streaming:
            return stream_batches(self.rows, shuffle_buffer=c.shuffle_buffer, **common)
        return map_batches(self.rows, workers=c.dataloader_workers, **common)

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
                for old in checkpoints(self.output_dir)[:-limit]:
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

    def latents(self, batch: dict[str, Any]) -> Any:
        """A draw from each image's latent distribution, scaled for the UNet."""
        import torch
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if self.latent_cache is not None:
            parameters = self.latent_cache.get("parameters", batch["rows"]).to(self.device)
        else:
            pixels = batch["pixel_values"].to(self.device, dtype=self.vae.dtype)
            with torch.no_grad():
                parameters = self.vae.encode(pixels).latent_dist.parameters
        latents = DiagonalGaussianDistribution(parameters).sample(generator=self.generator)
        return (latents * self.vae.config.scaling_factor).to(self.weight_dtype)

    def prompts(self, captions: list[str]) -> Any:
        import torch

        from controlnet.bases import Prompt

        if self.text_cache is not None:
            found = self.text_cache.lookup(captions)
            pooled = found.get("pooled")
            prompt = Prompt(found["hidden"].to(self.device), None if pooled is None else pooled.to(self.device))
        else:
            prompt = self.base.family.encode(self.text, captions, self.device)
        if self.config.empty_prompt_embedding == "zeros":
            prompt = prompt.select(torch.tensor([bool(caption) for caption in captions]))
        return prompt

    def loss(self, batch: dict[str, Any]) -> Any:
        import torch
        import torch.nn.functional as F

        latents = self.latents(batch)
        noise = torch.randn(latents.shape, generator=self.generator, device=self.device, dtype=latents.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=self.generator, device=self.device).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prompt = self.prompts(batch["captions"])
        size = (self.config.resolution, self.config.resolution)
        added = self.base.family.added_conditions(prompt, batch["geometry"].to(self.device), size)
        cond = batch["conditioning_pixel_values"].to(self.device, dtype=self.weight_dtype)
        down, mid = self.controlnet(
            noisy, timesteps, encoder_hidden_states=prompt.hidden, controlnet_cond=cond, added_cond_kwargs=added,
            return_dict=False,
        )
        if self.config.only_mid_control:
            down = [torch.zeros_like(d) for d in down]
        prediction = self.unet(
            noisy,
            timesteps,
            encoder_hidden_states=prompt.hidden,
            added_cond_kwargs=added,
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
        return TrainResult(self.global_step, self.output_dir, controlnet_dir, losses, speed, peak, self.resumed_from)

    def save_final(self) -> Path:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        controlnet_dir = self.output_dir / FINAL_FOLDER
        if accelerator.is_main_process:
            accelerator.unwrap_model(self.controlnet).save_pretrained(controlnet_dir, safe_serialization=True)
            if self.config.unlock_decoder:
                accelerator.unwrap_model(self.unet).save_pretrained(self.output_dir / "unet", safe_serialization=True)
        accelerator.wait_for_everyone()
        return controlnet_dir

    # --- validation ------------------------------------------------------------------------------

    def validation_cases(self) -> list[tuple[np.ndarray, str]]:
        from annotators.image import load_image
        from controlnet.training.data import decode

        c = self.config
        if c.validation_conditions:
            prompts = c.validation_prompts or ("",)
            if len(prompts) == 1:
                prompts = prompts * len(c.validation_conditions)
            return list(zip([load_image(p) for p in c.validation_conditions], prompts))
        if c.streaming:
            rows = list(self.rows.take(c.num_validation_rows))
        else:
            rows = [self.rows[i] for i in range(min(c.num_validation_rows, len(self.rows)))]
        if c.eval_every:
            # The scorer reads the rows as the datasets library decodes them (its own convention).
            self._validation_rows = list(self.decoded_rows.take(c.num_validation_rows)) if c.streaming else [
                self.decoded_rows[i] for i in range(len(rows))
            ]
        column = c.conditioning_column
        return [(decode(r[column], column), str(r[c.caption_column] or "")) for r in rows]

    def half_copy(self, model: Any) -> Any:
        copy = type(model).from_config(model.config)
        copy.load_state_dict(model.state_dict())
        return cast(copy, self.weight_dtype).to(self.device).eval()

    def decode(self, latents: Any, pipeline: Any) -> list[np.ndarray]:
        """Samples from latents, decoded by the VAE in its own dtype (SDXL's may be float32 while
        the UNet samples in half precision)."""
        import torch

        with torch.no_grad():
            images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        out = pipeline.image_processor.postprocess(images, output_type="np")
        return [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in out]

    def validate(self, step: int) -> None:
        import torch
        from diffusers import UniPCMultistepScheduler
        from PIL import Image

        from controlnet.bases import Parts

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
        scheduler = UniPCMultistepScheduler.from_config(self.noise_scheduler.config)
        pipeline = self.base.pipeline(Parts(self.text, self.vae, unet), controlnet, scheduler)
        size = c.resolution
        rows, made = [], []
        was_training = controlnet.training
        controlnet.eval()
        with self.offloaded_on_device():
            for index, (condition, prompt) in enumerate(self._validation_cases):
                cond_image = Image.fromarray(condition).resize((size, size), Image.Resampling.BILINEAR)
                generator = torch.Generator(device=self.device).manual_seed(c.seed + index)
                with torch.no_grad():
                    latents = pipeline(
                        prompt, image=cond_image, num_inference_steps=c.validation_inference_steps, generator=generator,
                        num_images_per_prompt=c.num_validation_images, height=size, width=size, output_type="latent",
                    ).images
                samples = self.decode(latents, pipeline)
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
