"""How much a trained ControlNet's output depends on its condition.

A ControlNet adds residuals to the UNet's skip connections and middle block. Part of them depends on
the condition, and part does not: the trainable copy can lower the loss by correcting the base
model alone, as fine-tuning would. This probe feeds the validation rows twice, once with their
condition and once with a black one, with the same latents, timesteps and prompts, and compares the
residuals: the condition's share is ``mean |r(condition) - r(black)| / mean |r(condition)|``.
A ControlNet that follows its condition has a large share; one that only fine-tunes the base has
a share near 0 whatever its residuals' size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: noise levels probed, as DDPM timesteps of 1000
TIMESTEPS = (250, 500, 750)


def condition_share(controlnet_dir: Path, base: Path, dataset: Path, rows: int = 8, seed: int = 0) -> dict[str, float]:
    """The mean absolute residual and the mean absolute change when the condition is blacked out,
    over the down and middle residuals of ``rows`` validation rows at :data:`TIMESTEPS`."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from controlnet.dataset.read import load_rows

    controlnet = ControlNetModel.from_pretrained(controlnet_dir).eval()
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae").eval()
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").eval()
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    table = load_rows(str(dataset))
    picked = [table[i] for i in range(min(rows, len(table)))]
    images = torch.from_numpy(np.stack([np.asarray(r["image"].convert("RGB")) for r in picked])).permute(0, 3, 1, 2).float() / 127.5 - 1
    conditions = torch.from_numpy(np.stack([np.asarray(r["conditioning_image"].convert("RGB")) for r in picked])).permute(0, 3, 1, 2).float() / 255
    generator = torch.Generator().manual_seed(seed)
    residual = change = 0.0
    with torch.inference_mode():
        ids = tokenizer([str(r["text"]) for r in picked], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        hidden = text_encoder(ids)[0]
        latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        for step in TIMESTEPS:
            timesteps = torch.full((len(picked),), step)
            noisy = scheduler.add_noise(latents, torch.randn(latents.shape, generator=generator), timesteps)
            down, mid = controlnet(noisy, timesteps, encoder_hidden_states=hidden, controlnet_cond=conditions, return_dict=False)
            down_black, mid_black = controlnet(noisy, timesteps, encoder_hidden_states=hidden, controlnet_cond=torch.zeros_like(conditions), return_dict=False)
            with_condition = torch.cat([r.flatten() for r in (*down, mid)])
            without = torch.cat([r.flatten() for r in (*down_black, mid_black)])
            residual += float(with_condition.abs().mean()) / len(TIMESTEPS)
            change += float((with_condition - without).abs().mean()) / len(TIMESTEPS)
    return {"residual": residual, "condition_change": change, "condition_share": change / residual if residual > 0 else 0.0}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m experiments.fill50k.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("controlnet", type=Path, help="a ControlNet folder (diffusers layout)")
    parser.add_argument("--work", type=Path, required=True, help="the experiment's scratch folder (its base and validation dataset)")
    args = parser.parse_args(argv)
    found: dict[str, Any] = condition_share(args.controlnet, args.work / "base", args.work / "datasets" / "val")
    print(", ".join(f"{key} {value:.3g}" for key, value in found.items()))


if __name__ == "__main__":
    main()
