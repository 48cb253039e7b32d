"""Stable Diffusion 1.x and 2.x: one CLIP text encoder whose last hidden states condition the UNet."""

from __future__ import annotations

from typing import Any

from controlnet.bases.family import Family, Prompt, TextParts, token_ids


class StableDiffusion(Family):
    name = "sd"
    description = "Stable Diffusion 1.x/2.x"
    text_parts = (("tokenizer", "text_encoder", "CLIPTextModel"),)

    def encode(self, text: TextParts, captions: list[str], device: Any) -> Prompt:
        import torch

        (tokenizer,), (encoder,) = text.tokenizers, text.encoders
        with torch.no_grad():
            return Prompt(encoder(token_ids(tokenizer, captions).to(device))[0])

    def pipeline(self, parts: Any, controlnet: Any, scheduler: Any, index: dict[str, Any]) -> Any:
        from diffusers import StableDiffusionControlNetPipeline

        return StableDiffusionControlNetPipeline(
            vae=parts.vae, text_encoder=parts.text.encoders[0], tokenizer=parts.text.tokenizers[0], unet=parts.unet,
            controlnet=controlnet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
