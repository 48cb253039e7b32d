"""What differs between Stable Diffusion families: the text encoders, how prompts become the UNet's
conditioning, and the ControlNet pipeline class. One subclass per family (``sd.py``, ``sdxl.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class TextParts:
    """A base's tokenizers and text encoders, in the order the family uses them."""

    tokenizers: tuple[Any, ...]
    encoders: tuple[Any, ...]


@dataclass
class Prompt:
    """A batch of encoded prompts: the UNet's cross-attention input, and (SDXL) the pooled embedding."""

    hidden: Any  # B x tokens x width
    pooled: Any | None = None  # B x width of the last encoder's projection

    def select(self, keep: Any) -> Prompt:
        """Rows where ``keep`` (a B-element bool tensor) holds, zeros elsewhere."""
        mask = keep.to(self.hidden.device)
        pooled = None if self.pooled is None else self.pooled * mask[:, None].to(self.pooled.dtype)
        return Prompt(self.hidden * mask[:, None, None].to(self.hidden.dtype), pooled)


def token_ids(tokenizer: Any, captions: list[str]) -> Any:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


class Family:
    """A family of base models. ``text_parts`` names each (tokenizer, encoder) subfolder pair with
    the transformers class of the encoder."""

    name: ClassVar[str]
    description: ClassVar[str]
    text_parts: ClassVar[tuple[tuple[str, str, str], ...]]

    def encode(self, text: TextParts, captions: list[str], device: Any) -> Prompt:
        raise NotImplementedError

    def vae_dtype(self, vae_config: dict[str, Any], dtype: Any) -> Any:
        """The dtype the trainer encodes with a VAE of ``vae_config`` in, when the other frozen
        models run in ``dtype``."""
        return dtype

    def added_conditions(self, prompt: Prompt, geometry: Any, size: tuple[int, int]) -> dict[str, Any] | None:
        """The UNet's (and ControlNet's) ``added_cond_kwargs`` for a batch; ``geometry`` is its
        B x 4 (original height, original width, crop top, crop left), ``size`` the trained (h, w)."""
        return None

    def pipeline(self, parts: Any, controlnet: Any, scheduler: Any, index: dict[str, Any]) -> Any:
        """The diffusers ControlNet pipeline over loaded ``parts`` (``index``: the base's model_index.json)."""
        raise NotImplementedError
