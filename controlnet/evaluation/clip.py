"""Text alignment: the CLIP score of a sample and its prompt (Hessel et al., "CLIPScore", EMNLP
2021), as torchmetrics and ControlNet++ report it: ``100 * max(cos(image, text), 0)`` with the
embeddings of a CLIP model loaded through transformers (a local folder, or a Hub id found in the
cache or, when online, downloaded by transformers' own loading)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ClipScorer", "ClipUnavailableError"]


class ClipUnavailableError(RuntimeError):
    """The CLIP model cannot be loaded; one line naming it and the cause."""


class ClipScorer:
    """Loads the model on first use; ``device`` is a torch device string."""

    def __init__(self, model: str, device: str = "cpu") -> None:
        self.model_id = model
        self.device = device
        self._model: Any = None
        self._processor: Any = None

    def load(self) -> ClipScorer:
        if self._model is None:
            from transformers import CLIPModel, CLIPProcessor

            try:
                self._processor = CLIPProcessor.from_pretrained(self.model_id)
                self._model = CLIPModel.from_pretrained(self.model_id).eval().to(self.device)
            except (OSError, ValueError) as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ClipUnavailableError(f"CLIP model {self.model_id} cannot be loaded: {first}") from None
        return self

    def __call__(self, images: list[np.ndarray], prompts: list[str]) -> list[float]:
        """The CLIP score of each RGB image with its prompt (prompts longer than the model's context
        are truncated, as torchmetrics does)."""
        import torch

        self.load()
        inputs = self._processor(text=prompts, images=list(images), return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            output = self._model(**{k: v.to(self.device) for k, v in inputs.items()})
        image = torch.nn.functional.normalize(output.image_embeds.float(), dim=-1)
        text = torch.nn.functional.normalize(output.text_embeds.float(), dim=-1)
        return (100.0 * (image * text).sum(dim=-1).clamp(min=0)).cpu().tolist()
