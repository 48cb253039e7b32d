"""Stable Diffusion base models by family: SD 1.x/2.x (``sd``) and SDXL (``sdxl``).

A base model is a diffusers pipeline folder or Hub id. Its family is read from its
``model_index.json``; the family knows how prompts condition its UNet and which ControlNet pipeline
samples it. The trainer (its validation) and the sampler load a base's parts and assemble their
pipelines only through :class:`BaseModel`, so both see the same models the same way.
"""

from controlnet.bases.family import Family, Prompt, TextParts
from controlnet.bases.model import BaseModel, Parts, UnsupportedBaseError, load_base

__all__ = ["BaseModel", "Family", "Parts", "Prompt", "TextParts", "UnsupportedBaseError", "load_base"]
