"""cn-train against a bare diffusers ControlNet training loop, same model, data and batch.

    OMP_NUM_THREADS=1 python bench/train.py                 # CPU, tiny SD model built on the spot, 32 px
    OMP_NUM_THREADS=1 python bench/train.py --model sdxl    # CPU, tiny SDXL model built on the spot
    python bench/train.py --base-model runwayml/stable-diffusion-v1-5 --resolution 512 --batch 4
                                                            # GPU: a real base model (cached locally)
    python bench/train.py --tiny-channels 128 --resolution 256 --batch 8 --mixed-precision bf16
                                                            # GPU, offline: the tiny model widened
    python bench/train.py --model sdxl --sdxl-size --resolution 1024 --batch 1 --mixed-precision bf16 \
        --gradient-checkpointing --recipes                  # GPU, offline: SDXL-size, random weights

Each variant runs in its own process (so peak memory is its own), ``--repeats`` times, alternating;
the median steps/s counts. The bare loop is the core of diffusers' ``train_controlnet.py`` (SD) or
``train_controlnet_sdxl.py`` (SDXL): a shuffled torch DataLoader over the dataset with resize/crop
transforms, VAE encode, noise, text encode (SDXL: both encoders, the pooled embedding, and the size
``time_ids``), ControlNet, UNet, MSE, backward, clip, AdamW step. cn-train adds its resumable data
order, per-sample seeded transforms, accelerate, and loss logging. Target: its overhead per step is
at most 10%: wall time on a GPU; on a CPU, CPU time, since on a machine shared with other work the
wall clock mostly measures the waiting for a core. Both are printed. Peak memory: CUDA max allocated
on GPU, process max RSS on CPU.

``--recipes`` then runs cn-train once with each memory recipe (none, 8-bit Adam, cached latents,
cached text embeddings, both caches, both caches with 8-bit Adam) on top of the given precision and
checkpointing, and prints samples/s and peak memory for each (peak memory counts the training
steps; the caches are built before them). ``--sdxl-size`` builds an SDXL base with the real SDXL architecture and
random weights (a 2.6B-parameter UNet, both CLIP text encoders, the 8x VAE) for that: on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_dataset(folder: Path, rows: int, size: int) -> Path:
    """``rows`` crops of scikit-image photographs (mixed shapes) with their Canny maps."""
    from PIL import Image
    from skimage import data

    from annotators.image import hwc3
    from controlnet.testing import write_dataset

    sources = [hwc3(data.astronaut()), hwc3(data.coffee()), hwc3(data.chelsea()), hwc3(data.rocket())]
    images = []
    for i in range(rows):
        photo = Image.fromarray(sources[i % len(sources)])
        photo.thumbnail((size + 8 * (i % 5), size + 8 * (i % 5)))
        images.append(np.asarray(photo))
    return write_dataset(folder, images, [f"photo {i}" for i in range(rows)])


class StepClock:
    """Wall and CPU time at the end of each step. Steps/s count from the end of the first step, so
    model loading and warm-up are left out. CPU seconds per step do not count time spent waiting
    for a core, so they stay comparable on a busy machine."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def tick(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def rates(self) -> dict[str, float]:
        steps = len(self.wall) - 1
        return {
            "steps_per_second": steps / (self.wall[-1] - self.wall[0]),
            "cpu_seconds_per_step": (self.cpu[-1] - self.cpu[0]) / steps,
        }


def peak_memory(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


#: cn-train options of each memory recipe, on top of --mixed-precision and --gradient-checkpointing
RECIPES = {
    "none": {},
    "8-bit Adam": {"use_8bit_adam": True},
    "cached latents": {"cache_latents": True},
    "cached text embeddings": {"cache_text_embeddings": True},
    "both caches": {"cache_latents": True, "cache_text_embeddings": True},
    "both caches, 8-bit Adam": {"use_8bit_adam": True, "cache_latents": True, "cache_text_embeddings": True},
}


def run_ours(args: argparse.Namespace) -> dict[str, float]:
    from controlnet.training.trainer import TrainConfig, train

    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        result = train(
            TrainConfig(
                base_model=args.base_model, dataset=args.dataset, output_dir=out, resolution=args.resolution,
                train_batch_size=args.batch, max_steps=args.steps, mixed_precision=args.mixed_precision,
                gradient_checkpointing=args.gradient_checkpointing, checkpointing_steps=0, validation_steps=0,
                report_to=None, seed=0, dataloader_workers=args.workers, **json.loads(args.recipe),
            ),
            progress=lambda step, logs: clock.tick(),
        )
    device = "cuda" if result.peak_memory_bytes is not None else "cpu"
    return {**clock.rates(), "peak_memory": peak_memory(device)}


def run_bare(args: argparse.Namespace) -> dict[str, float]:
    import torch
    import torch.nn.functional as F
    import transformers
    from datasets import load_dataset
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDPMScheduler,
        UNet2DConditionModel,
    )
    from PIL import Image

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision, torch.float32)
    torch.manual_seed(0)
    base = args.base_model
    sdxl = args.model == "sdxl"
    pairs = [("tokenizer", "text_encoder", "CLIPTextModel")]
    if sdxl:
        pairs.append(("tokenizer_2", "text_encoder_2", "CLIPTextModelWithProjection"))
    tokenizers = [transformers.AutoTokenizer.from_pretrained(base, subfolder=t) for t, _, _ in pairs]
    encoders = [getattr(transformers, cls).from_pretrained(base, subfolder=e, dtype=dtype).to(device) for _, e, cls in pairs]
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    # diffusers' SDXL script keeps SDXL's own VAE in float32: it overflows in float16.
    vae_dtype = torch.float32 if sdxl else dtype
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", dtype=vae_dtype).to(device)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    controlnet = ControlNetModel.from_unet(unet).to(device)
    unet.to(device, dtype)
    for frozen in (vae, *encoders, unet):
        frozen.requires_grad_(False)
    if args.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        unet.enable_gradient_checkpointing()
    controlnet.train()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-5, weight_decay=1e-2)

    size = args.resolution

    def crop(image: Image.Image) -> tuple[Image.Image, list[int]]:
        """Resize the short side to ``size``, centre crop; also the SDXL size numbers of the crop."""
        image = image.convert("RGB")
        w, h = image.size
        s = size / min(w, h)
        image = image.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
        left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
        return image.crop((left, top, left + size, top + size)), [h, w, top, left, size, size]

    def to_tensor(image: Image.Image, scale_to_unit: bool) -> torch.Tensor:
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())
        return tensor if scale_to_unit else tensor * 2 - 1

    rows = load_dataset(args.dataset, split="train")

    def transform(batch: dict) -> dict:
        captions = ["" if np.random.random() < 0.5 else c for c in batch["text"]]
        images = [crop(i) for i in batch["image"]]
        out = {
            "pixel_values": [to_tensor(i, False) for i, _ in images],
            "conditioning_pixel_values": [to_tensor(crop(i)[0], True) for i in batch["conditioning_image"]],
            "time_ids": [torch.tensor(t, dtype=torch.float32) for _, t in images],
        }
        for index, tokenizer in enumerate(tokenizers):
            out[f"input_ids_{index}"] = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                                                  truncation=True, return_tensors="pt").input_ids
        return out

    def collate(examples: list[dict]) -> dict:
        return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}

    loader = torch.utils.data.DataLoader(
        rows.with_transform(transform), batch_size=args.batch, shuffle=True, drop_last=True,
        collate_fn=collate, num_workers=args.workers,
    )
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)
    clock, step = StepClock(), 0
    while step < args.steps:
        for batch in loader:
            with autocast:
                latents = vae.encode(batch["pixel_values"].to(device, vae_dtype)).latent_dist.sample()
                latents = (latents * vae.config.scaling_factor).to(dtype)
                noise = torch.randn_like(latents)
                t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
                noisy = scheduler.add_noise(latents, noise, t)
                with torch.no_grad():
                    if sdxl:
                        outputs = [e(batch[f"input_ids_{i}"].to(device), output_hidden_states=True) for i, e in enumerate(encoders)]
                        text = torch.cat([o.hidden_states[-2] for o in outputs], dim=-1)
                        added = {"text_embeds": outputs[-1][0], "time_ids": batch["time_ids"].to(device, text.dtype)}
                    else:
                        text, added = encoders[0](batch["input_ids_0"].to(device))[0], None
                down, mid = controlnet(noisy, t, encoder_hidden_states=text, added_cond_kwargs=added,
                                       controlnet_cond=batch["conditioning_pixel_values"].to(device, dtype), return_dict=False)
                pred = unet(noisy, t, encoder_hidden_states=text, added_cond_kwargs=added,
                            down_block_additional_residuals=[d.to(dtype) for d in down],
                            mid_block_additional_residual=mid.to(dtype), return_dict=False)[0]
                loss = F.mse_loss(pred.float(), noise.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.detach().item()  # the reference script logs the loss every step
            clock.tick()
            step += 1
            if step == args.steps:
                break
    return {**clock.rates(), "peak_memory": peak_memory(device)}


def build_sdxl_size_pipeline(folder: Path) -> Path:
    """SDXL's architecture (the configs of stabilityai/stable-diffusion-xl-base-1.0) with random
    weights, and the merge-free test tokenizer: the memory and speed of a real SDXL step, offline."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    from controlnet.testing import MAX_TOKENS, write_tokenizer

    vocab = write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025, force_upcast=True,
    )

    def clip(width: int, layers: int, heads: int, act: str, **extra: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
            num_attention_heads=heads, max_position_embeddings=MAX_TOKENS, hidden_act=act,
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1, **extra,
        )

    pipeline = StableDiffusionXLPipeline(
        vae=vae, unet=unet,
        text_encoder=CLIPTextModel(clip(768, 12, 12, "quick_gelu")),
        text_encoder_2=CLIPTextModelWithProjection(clip(1280, 32, 20, "gelu", projection_dim=1280)),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def worker(args: argparse.Namespace) -> None:
    result = run_ours(args) if args.worker == "ours" else run_bare(args)
    print("RESULT " + json.dumps(result))


def measure(variant: str, args: argparse.Namespace, recipe: dict | None = None) -> dict[str, float]:
    command = [
        sys.executable, __file__, "--worker", variant, "--base-model", args.base_model, "--dataset", args.dataset,
        "--resolution", str(args.resolution), "--batch", str(args.batch), "--steps", str(args.steps),
        "--mixed-precision", args.mixed_precision, "--workers", str(args.workers), "--model", args.model,
        "--recipe", json.dumps(recipe or {}),
    ] + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        if recipe is not None:  # a recipe that cannot run here (8-bit Adam without bitsandbytes)
            return {"failed": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
        sys.exit(f"{variant} run failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["sd", "sdxl"], default="sd", help="the family of the base model")
    parser.add_argument("--base-model", help="diffusers SD or SDXL folder or Hub id (default: a tiny model built here)")
    parser.add_argument("--sdxl-size", action="store_true", help="with --model sdxl: build SDXL's full architecture, random weights")
    parser.add_argument("--tiny-channels", type=int, default=32,
                        help="width of the tiny model's UNet and VAE (a multiple of 32); wider gives a GPU real work per step")
    parser.add_argument("--dataset", help="cn-annotate dataset folder (default: photographs + Canny built here)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--recipes", action="store_true", help="also run cn-train with each memory recipe")
    parser.add_argument("--worker", choices=["ours", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--recipe", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as scratch:
        if args.base_model is None:
            from controlnet.testing import build_tiny_pipeline, build_tiny_sdxl_pipeline

            folder = Path(scratch) / f"base-{args.model}"
            if args.model == "sd":
                args.base_model = str(build_tiny_pipeline(folder, channels=args.tiny_channels))
            elif args.sdxl_size:
                args.base_model = str(build_sdxl_size_pipeline(folder))
            else:
                args.base_model = str(build_tiny_sdxl_pipeline(folder, channels=args.tiny_channels))
        if args.dataset is None:
            args.dataset = str(make_dataset(Path(scratch) / "dataset", args.rows, args.resolution))
        runs: dict[str, list[dict[str, float]]] = {"bare": [], "ours": []}
        for _ in range(args.repeats):
            for variant in ("bare", "ours"):
                runs[variant].append(measure(variant, args))
        recipes = {name: measure("ours", args, recipe) for name, recipe in RECIPES.items()} if args.recipes else {}
    speed = {v: statistics.median(r["steps_per_second"] for r in runs[v]) for v in runs}
    cpu = {v: statistics.median(r["cpu_seconds_per_step"] for r in runs[v]) for v in runs}
    memory = {v: max(r["peak_memory"] for r in runs[v]) for v in runs}
    print(f"{args.model}: batch {args.batch} at {args.resolution}px, mixed precision {args.mixed_precision}"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}, {args.steps} steps x {args.repeats} runs each")
    for variant in ("bare", "ours"):
        label = "bare diffusers loop" if variant == "bare" else "cn-train"
        each = ", ".join(f"{r['steps_per_second']:.2f}" for r in runs[variant])
        print(f"{label:20s} {speed[variant]:7.3f} steps/s (runs: {each})  {cpu[variant]:.3f} CPU s/step  "
              f"peak memory {memory[variant] / 2**20:8.1f} MiB")
    wall_overhead = speed["bare"] / speed["ours"] - 1
    cpu_overhead = cpu["ours"] / cpu["bare"] - 1
    print(f"cn-train overhead: {wall_overhead:+.1%} wall time per step, {cpu_overhead:+.1%} CPU time per step; "
          f"memory {memory['ours'] / memory['bare']:.3f}x")
    # On a GPU the wall clock is the measure; on a CPU shared with other work, time spent waiting
    # for a core swamps the difference, and CPU time per step is the fair one.
    on_gpu = _cuda_available()
    for name, result in recipes.items():
        if "failed" in result:
            print(f"recipe {name:24s} not run: {result['failed']}")
        else:
            print(f"recipe {name:24s} {result['steps_per_second'] * args.batch:7.3f} samples/s  "
                  f"peak memory {result['peak_memory'] / 2**20:8.1f} MiB")
    judged, name = (wall_overhead, "wall") if on_gpu else (cpu_overhead, "CPU")
    verdict = "PASS" if judged <= 0.10 else "FAIL"
    print(f"{verdict}: {name}-time overhead {judged:+.1%} (target <= +10%)")
    sys.exit(0 if verdict == "PASS" else 1)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
