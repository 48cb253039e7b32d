"""Stable Diffusion XL: two CLIP text encoders and micro-conditioning on image geometry.

Following SDXL (Podell et al., 2023) as diffusers implements it: the UNet's cross-attention input is
the concatenation of both encoders' penultimate hidden states; the second encoder's projected
(pooled) embedding and the ``time_ids`` (original height and width, crop top and left, target
height and width) enter through the UNet's added "text_time" embedding. A ControlNet made by
``ControlNetModel.from_unet`` copies that embedding and takes the same inputs.
"""

from __future__ import annotations

from typing import Any

from controlnet.bases.family import Family, Prompt, TextParts, token_ids


class StableDiffusionXL(Family):
    name = "sdxl"
    description = "Stable Diffusion XL"
    text_parts = (
        ("tokenizer", "text_encoder", "CLIPTextModel"),
        ("tokenizer_2", "text_encoder_2", "CLIPTextModelWithProjection"),
    )

    def encode(self, text: TextParts, captions: list[str], device: Any) -> Prompt:
        import torch

        hidden, pooled = [], None
        with torch.no_grad():
            for tokenizer, encoder in zip(text.tokenizers, text.encoders):
                out = encoder(token_ids(tokenizer, captions).to(device), output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                pooled = out[0]  # the last encoder's projected embedding
        return Prompt(torch.cat(hidden, dim=-1), pooled)

    def vae_dtype(self, vae_config: dict[str, Any], dtype: Any) -> Any:
        """SDXL's own VAE overflows in half precision and says so (``force_upcast``): it encodes in
        float32, as diffusers' SDXL training scripts do. A VAE fixed for half precision (given with
        ``--vae``) clears the flag and runs in ``dtype``."""
        import torch

        return torch.float32 if vae_config.get("force_upcast", True) else dtype

    def added_conditions(self, prompt: Prompt, geometry: Any, size: tuple[int, int]) -> dict[str, Any]:
        import torch

        target = torch.tensor(size, dtype=geometry.dtype, device=geometry.device).expand(len(geometry), 2)
        time_ids = torch.cat([geometry, target], dim=1).to(prompt.hidden.device, prompt.hidden.dtype)
        return {"text_embeds": prompt.pooled, "time_ids": time_ids}

    def pipeline(self, parts: Any, controlnet: Any, scheduler: Any, index: dict[str, Any]) -> Any:
        from diffusers import StableDiffusionXLControlNetPipeline

        return StableDiffusionXLControlNetPipeline(
            vae=parts.vae, text_encoder=parts.text.encoders[0], text_encoder_2=parts.text.encoders[1],
            tokenizer=parts.text.tokenizers[0], tokenizer_2=parts.text.tokenizers[1], unet=parts.unet,
            controlnet=controlnet, scheduler=scheduler,
            # SDXL's unconditional input is all zeros, not the encoded empty prompt, when its base says so.
            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
            add_watermarker=False,
        )
