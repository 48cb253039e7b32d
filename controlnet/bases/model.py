"""A base model's family, read from its ``model_index.json``, and the loading of its parts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlnet.bases.family import Family, TextParts
from controlnet.bases.sd import StableDiffusion
from controlnet.bases.sdxl import StableDiffusionXL
from controlnet.dtypes import dtype_keyword

INDEX_FILE = "model_index.json"


class UnsupportedBaseError(ValueError):
    """A base model that is missing, unreadable, or of a family the trainer and sampler do not take."""


@dataclass
class Parts:
    """The frozen parts of a base model that a ControlNet pipeline runs with."""

    text: TextParts
    vae: Any
    unet: Any


def _read_index(source: str, revision: str | None) -> dict[str, Any]:
    folder = Path(source).expanduser()
    if folder.is_dir():
        path = folder / INDEX_FILE
        if not path.is_file():
            raise UnsupportedBaseError(f"base model {source}: no {INDEX_FILE} (not a diffusers pipeline folder)")
    else:
        if source.startswith(("/", ".", "~")):
            raise UnsupportedBaseError(f"base model {source} does not exist")
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            path = Path(hf_hub_download(source, INDEX_FILE, revision=revision))
        except (LocalEntryNotFoundError, HfHubHTTPError, ValueError) as error:
            raise UnsupportedBaseError(
                f"base model {source}: cannot get its {INDEX_FILE} ({type(error).__name__}); "
                "give a local pipeline folder, or a Hub id that is reachable or cached"
            ) from None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UnsupportedBaseError(f"base model {source}: unreadable {INDEX_FILE} ({error})") from None


def family_of(index: dict[str, Any]) -> Family:
    """SDXL when both text encoders are there, SD 1.x/2.x when one CLIP text encoder is."""
    parts = {name for name, value in index.items() if isinstance(value, list)}
    if {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer_2"} <= parts:
        return StableDiffusionXL()
    if {"unet", "vae", "text_encoder", "tokenizer"} <= parts and "text_encoder_2" not in parts:
        return StableDiffusion()
    kind = index.get("_class_name", "pipeline")
    raise UnsupportedBaseError(
        f"a {kind} is not a base this trainer takes: Stable Diffusion 1.x/2.x or SDXL (a UNet, a VAE and CLIP text encoders)"
    )


@dataclass(frozen=True)
class BaseModel:
    source: str
    revision: str | None
    variant: str | None
    family: Family
    index: dict[str, Any]

    def _load(self, cls: Any, subfolder: str, dtype: Any | None = None) -> Any:
        """A part from its subfolder; a model (``dtype`` given) in the weights ``variant``."""
        kwargs: dict[str, Any] = {"subfolder": subfolder, "revision": self.revision}
        if dtype is not None:
            library = "transformers" if cls.__module__.startswith("transformers") else "diffusers"
            kwargs.update(variant=self.variant, **dtype_keyword(dtype, library))
        return cls.from_pretrained(self.source, **kwargs)

    def load_text(self, dtype: Any) -> TextParts:
        import transformers

        tokenizers, encoders = [], []
        for tokenizer_folder, encoder_folder, encoder_class in self.family.text_parts:
            tokenizers.append(self._load(transformers.AutoTokenizer, tokenizer_folder))
            encoders.append(self._load(getattr(transformers, encoder_class), encoder_folder, dtype))
        return TextParts(tuple(tokenizers), tuple(encoders))

    def load_vae(self, dtype: Any, vae: str | None = None, upcast: bool = False) -> Any:
        """The base's VAE, or the separate VAE folder or Hub id ``vae`` (such as an fp16-fixed one).
        With ``upcast`` (for encoding), in the dtype its family encodes it in (float32 for SDXL's own
        VAE), loaded so from the start: an upcast after loading in half precision would keep the
        rounding."""
        from diffusers import AutoencoderKL

        if vae is None:
            source, options = self.source, {"subfolder": "vae", "revision": self.revision, "variant": self.variant}
        else:
            if vae.startswith(("/", ".", "~")) and not Path(vae).expanduser().exists():
                raise UnsupportedBaseError(f"VAE {vae} does not exist")
            subfolder = "vae" if (Path(vae).expanduser() / "vae").is_dir() else None  # a whole pipeline folder
            source, options = vae, {"subfolder": subfolder}
        if upcast:
            config = AutoencoderKL.load_config(source, **{k: v for k, v in options.items() if k != "variant"})
            dtype = self.family.vae_dtype(config, dtype)
        return AutoencoderKL.from_pretrained(source, **options, **dtype_keyword(dtype))

    def load_unet(self, dtype: Any) -> Any:
        from diffusers import UNet2DConditionModel

        return self._load(UNet2DConditionModel, "unet", dtype)

    def load_scheduler(self, cls: Any) -> Any:
        """The base's scheduler configuration, as a ``cls`` scheduler."""
        return cls.from_pretrained(self.source, subfolder="scheduler", revision=self.revision)

    def load_parts(self, dtype: Any, vae: str | None = None) -> Parts:
        return Parts(self.load_text(dtype), self.load_vae(dtype, vae), self.load_unet(dtype))

    def pipeline(self, parts: Parts, controlnet: Any, scheduler: Any) -> Any:
        """The family's ControlNet pipeline (one ControlNet, or a list of them) over ``parts``."""
        pipeline = self.family.pipeline(parts, controlnet, scheduler, self.index)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline


def load_base(source: str, revision: str | None = None, variant: str | None = None) -> BaseModel:
    """The base model at ``source`` (a folder or Hub id), its family read from ``model_index.json``."""
    index = _read_index(source, revision)
    return BaseModel(source, revision, variant, family_of(index), index)
