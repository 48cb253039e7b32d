"""Tiny Stable Diffusion pipelines and datasets built offline, for tests, benchmarks and a first try.

The pipelines have the layout of real SD 1.x and SDXL diffusers folders (``unet``, ``vae``,
``text_encoder`` [and ``text_encoder_2``], ``tokenizer`` [and ``tokenizer_2``], ``scheduler``), so
that the trainer and the sampler load them through the same code as a real base model; only the
sizes are small enough for a CPU. The tokenizers are byte-level CLIP BPEs without merges, whose
vocabulary is written here. Their weights are random: what they generate is noise.

    python -m controlnet.testing sd tiny-sd        # or: make tiny-models
    python -m controlnet.testing sdxl tiny-sdxl
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _word_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges, learned by the ``tokenizers`` trainer on ``words`` until none is left to make,
    that encode each of ``words`` as one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    learner = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    learner.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=1 << 20, min_frequency=0, show_progress=False, end_of_word_suffix="</w>")
    learner.train_from_iterator(sorted(set(words)), trainer)
    return [tuple(merge) for merge in json.loads(learner.to_str())["model"]["merges"]]


def write_tokenizer(folder: Path, words: Sequence[str] = (), max_length: int = MAX_TOKENS) -> int:
    """A CLIP tokenizer in ``folder`` that pads prompts to ``max_length`` tokens; returns its
    vocabulary size. Without ``words`` it has no merges (every byte is a token); with them (ASCII,
    lower case) it has the merges that make each of them one token, as CLIP's own merges do for
    common English words."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    merges = _word_merges(words) if words else []
    merged = [a + b for a, b in merges if a + b not in symbols]
    tokens = symbols + [s + "</w>" for s in symbols] + list(dict.fromkeys(merged)) + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    import inspect

    from transformers import CLIPTokenizer

    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        files = {"vocab": vocab, "merges": merges}
    else:
        files = {"vocab_file": str(folder / "vocab.json"), "merges_file": str(folder / "merges.txt")}
    CLIPTokenizer(**files, model_max_length=max_length).save_pretrained(folder)
    return len(vocab)


def _tiny_vae(channels: int, scaling_factor: float, force_upcast: bool) -> Any:
    """A VAE with Stable Diffusion's four levels, so it downsamples 8x like every real one."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(channels, channels, 2 * channels, 2 * channels),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def clip_text_config(
    vocab_size: int, width: int, projection: int | None = None, intermediate_size: int = 37, max_positions: int = MAX_TOKENS
) -> Any:
    """A small two-layer CLIP text config for a :func:`write_tokenizer` vocabulary of ``vocab_size``
    (whose last two tokens are the start and end tokens, the end one also padding)."""
    from transformers import CLIPTextConfig

    extra = {} if projection is None else {"projection_dim": projection}
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        **extra,
    )


def build_tiny_pipeline(folder: str | Path, seed: int = 0, cross_attention_dim: int = 32, channels: int = 32) -> Path:
    """Save a tiny, randomly initialised SD 1.x-style pipeline as a diffusers folder. ``channels`` (a
    multiple of 32, the group-norm size) widens the UNet and VAE, whose levels have ``channels``
    and twice as many: benchmarks on a GPU use it to give each step real work. Its VAE downsamples
    8x, as real ones do, so diffusers' ``ControlNetModel.from_unet`` defaults fit it."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    vocab_size = write_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
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
    vae = _tiny_vae(channels, scaling_factor=0.18215, force_upcast=False)
    text_encoder = CLIPTextModel(clip_text_config(vocab_size, cross_attention_dim))
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


def build_tiny_sdxl_pipeline(folder: str | Path, seed: int = 0, channels: int = 32, text_width: int = 32) -> Path:
    """Save a tiny, randomly initialised SDXL pipeline as a diffusers folder: SDXL's layout and
    conditioning (two CLIP text encoders, the second with a projection; a UNet with the "text_time"
    added embedding of pooled text and six size numbers; a VAE that downsamples 8x, in float32 as
    SDXL's must be) at sizes a CPU trains in seconds."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    vocab_size = write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2")
    torch.manual_seed(seed)
    time_width = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(channels, 2 * channels),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=time_width,
        projection_class_embeddings_input_dim=6 * time_width + text_width,  # six size numbers + pooled text
        cross_attention_dim=2 * text_width,  # both encoders' hidden states, concatenated
        norm_num_groups=32,
        in_channels=4,
        out_channels=4,
    )
    vae = _tiny_vae(channels, scaling_factor=0.13025, force_upcast=True)
    text_encoder = CLIPTextModel(clip_text_config(vocab_size, text_width))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(vocab_size, text_width, projection=text_width))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading",
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
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


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny, randomly initialised base model for trying cn-train offline.")
    parser.add_argument("family", choices=["sd", "sdxl"], help="SD 1.x-style or SDXL-style pipeline")
    parser.add_argument("output", type=Path, help="the diffusers pipeline folder to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build = build_tiny_pipeline if args.family == "sd" else build_tiny_sdxl_pipeline
    print(f"wrote {build(args.output, seed=args.seed)}")


if __name__ == "__main__":
    main()
