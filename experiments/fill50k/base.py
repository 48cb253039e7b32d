"""Pretraining the experiment's own text-to-image base model, from scratch, on the fill50k-like set.

No model weights can be downloaded here, so the base that the ControlNet is trained on is made first:
a small VAE (8x downsampling, as Stable Diffusion's) trained to reconstruct the images, then a small
UNet and CLIP text encoder trained together to denoise its latents given the captions (10% empty
captions, so that classifier-free guidance works). The result is saved as a diffusers Stable Diffusion
folder, which cn-train and cn-sample take like any base model.

Made to learn within minutes on a CPU: the UNet attends (to itself and to the text) only at its
coarser level, the prompt is 16 tokens, each word of the set one token; the loss is weighted by
min-SNR (Hang et al. 2023), and the saved weights are an exponential moving average of the trained
ones, as Stable Diffusion's are.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controlnet.testing import clip_text_config, write_tokenizer

#: prompt length in tokens: the set's captions are 7 words, each one token, with start and end
TEXT_TOKENS = 16
TEXT_WIDTH = 64


@dataclass(frozen=True)
class BaseScale:
    size: int  # image side in pixels
    vae_steps: int
    unet_steps: int
    batch_size: int
    channels: int  # UNet width of its first level
    vae_channels: tuple[int, ...] = (32, 32, 64, 64)  # widths of the VAE's four levels (8x downsampling)
    vae_crop: int | None = None  # the VAE trains on random square crops of this side (None: whole images)
    vae_learning_rate: float = 3e-3
    learning_rate: float = 1e-3  # UNet and text encoder
    ema_decay: float = 0.995
    min_snr_gamma: float = 5.0


def _vae(size: int, channels: tuple[int, ...]):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(32, math.gcd(*channels)),
        sample_size=size,
        # Fully convolutional (no attention in the middle block), so that training on crops teaches
        # it what it does on whole images.
        mid_block_add_attention=False,
    )


def _unet(size: int, channels: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(channels, 2 * channels),
        layers_per_block=1,
        # Attention at the coarse level only: where the text decides the colours, at half the cost.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _text_encoder(vocab_size: int, hidden: int):
    from transformers import CLIPTextModel

    return CLIPTextModel(clip_text_config(vocab_size, hidden, intermediate_size=2 * hidden, max_positions=TEXT_TOKENS))


def train_vae(images: np.ndarray, scale: BaseScale, seed: int, log: list[dict]) -> object:
    """An AutoencoderKL trained on ``images`` (N x H x W x 3 uint8) with an L1 reconstruction loss
    (sharper edges than MSE) and a small KL term, on random crops when ``scale.vae_crop`` is set (the
    full-resolution levels dominate its cost, and flat circles look alike at any crop)."""
    import torch

    torch.manual_seed(seed)
    vae = _vae(scale.size, scale.vae_channels)
    optimiser = torch.optim.AdamW(vae.parameters(), lr=scale.vae_learning_rate, weight_decay=0.0)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    generator = torch.Generator().manual_seed(seed)
    crop = min(scale.vae_crop or scale.size, scale.size)
    for step in range(scale.vae_steps):
        batch = data[torch.randint(len(data), (scale.batch_size,), generator=generator)]
        top, left = torch.randint(0, scale.size - crop + 1, (2,), generator=generator).tolist()
        batch = batch[:, :, top : top + crop, left : left + crop]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = (reconstruction - batch).abs().mean() + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == scale.vae_steps - 1:
            log.append({"stage": "vae", "step": step, "loss": loss.item()})
    return vae.eval().requires_grad_(False)


def train_base(images: np.ndarray, captions: list[str], folder: Path, scale: BaseScale, seed: int = 0, vae: object | None = None) -> dict:
    """Train the VAE (unless a trained ``vae`` is given), then the UNet and text encoder, and save the
    pipeline in ``folder``. Returns the losses and the time taken."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    started = time.perf_counter()
    log: list[dict] = []
    if vae is None:
        vae = train_vae(images, scale, seed, log)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.inference_mode():
        latents = torch.cat([vae.encode(data[i : i + 64]).latent_dist.mean for i in range(0, len(data), 64)])
    scaling = 1.0 / float(latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents.clone() * scaling

    # The set's words are whole tokens, as common English words are in CLIP's vocabulary.
    words = sorted({word for caption in captions for word in caption.split()})
    vocab_size = write_tokenizer(folder / "tokenizer", words=words, max_length=TEXT_TOKENS)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = _text_encoder(vocab_size, TEXT_WIDTH)
    unet = _unet(scale.size, scale.channels, TEXT_WIDTH)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    tokens = tokenizer(captions, padding="max_length", max_length=TEXT_TOKENS, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=TEXT_TOKENS, return_tensors="pt").input_ids
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    averaged = [p.detach().clone() for p in parameters]
    optimiser = torch.optim.AdamW(parameters, lr=scale.learning_rate, weight_decay=1e-2)
    warmup = max(1, scale.unet_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, scale.unet_steps) / scale.unet_steps)))
    # min-SNR-gamma weights of the noise-prediction loss: min(SNR, gamma) / SNR per timestep.
    snr = scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)
    weights = snr.clamp(max=scale.min_snr_gamma) / snr
    generator = torch.Generator().manual_seed(seed + 1)
    unet.train()
    text_encoder.train()
    for step in range(scale.unet_steps):
        index = torch.randint(len(latents), (scale.batch_size,), generator=generator)
        ids = tokens[index].clone()
        drop = torch.rand(len(index), generator=generator) < 0.1
        ids[drop] = empty
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = (weights[timesteps] * (prediction - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            for parameter, average in zip(parameters, averaged, strict=True):
                average.lerp_(parameter, 1.0 - scale.ema_decay)
        if step % 100 == 0 or step == scale.unet_steps - 1:
            log.append({"stage": "unet", "step": step, "loss": loss.item()})
    with torch.no_grad():
        for parameter, average in zip(parameters, averaged, strict=True):
            parameter.copy_(average)
    pipeline = StableDiffusionPipeline(
        unet=unet.eval(), vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return {"log": log, "seconds": time.perf_counter() - started, "latent_scaling": scaling}
