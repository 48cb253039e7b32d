"""Tiny Stable Diffusion pipelines and datasets built offline, for tests and benchmarks.

The pipeline has the layout of a real SD 1.x diffusers folder (``unet``, ``vae``, ``text_encoder``,
``tokenizer``, ``scheduler``), so that the trainer and the sampler load it through the same code as
a real base model; only the sizes are small enough for a CPU. The tokenizer is a byte-level CLIP BPE
without merges, whose vocabulary is written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import annotators

MAX_TOKENS = 77


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes (GPT-2 / CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_tokenizer(folder: Path) -> int:
    """A merge-free CLIP tokenizer in ``folder``; returns its vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    import inspect

    from transformers import CLIPTokenizer

    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        files = {"vocab": {t: i for i, t in enumerate(tokens)}, "merges": []}
    else:
        files = {"vocab_file": str(folder / "vocab.json"), "merges_file": str(folder / "merges.txt")}
    CLIPTokenizer(**files, model_max_length=MAX_TOKENS).save_pretrained(folder)
    return len(tokens)


def build_tiny_pipeline(folder: str | Path, seed: int = 0, cross_attention_dim: int = 32, channels: int = 32) -> Path:
    """Save a tiny, randomly initialised SD 1.x-style pipeline as a diffusers folder. ``channels`` (a
    multiple of 32, the group-norm size) widens the UNet and VAE, whose two levels have ``channels``
    and twice as many: benchmarks on a GPU use it to give each step real work."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    vocab_size = write_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(channels, 2 * channels),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
        in_channels=4,
        out_channels=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(channels, 2 * channels),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cross_attention_dim,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def write_dataset(folder: str | Path, images: list[np.ndarray], captions: list[str], annotator: str = "canny") -> Path:
    """A dataset made by the real builder (cn-annotate): the images are written as PNG files with
    sidecar captions to ``folder/images`` and annotated at their own size into ``folder/dataset``."""
    from PIL import Image as PILImage

    from controlnet.dataset.build import BuildConfig, build

    folder = Path(folder)
    sources = folder / "images"
    sources.mkdir(parents=True, exist_ok=True)
    for index, (image, caption) in enumerate(zip(images, captions, strict=True)):
        PILImage.fromarray(image).save(sources / f"{index:05d}.png")
        (sources / f"{index:05d}.txt").write_text(caption)
    config = annotators.create(annotator).config
    build(BuildConfig(input=str(sources), output=folder / "dataset", annotators=((annotator, config),), keep_size=True, workers=1))
    return folder / "dataset"
