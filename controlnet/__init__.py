"""ControlNet datasets, training, sampling and evaluation.

    >>> import controlnet
    >>> controlnet.train(controlnet.TrainConfig(base_model=..., dataset=...))
    >>> controlnet.sample(controlnet.SampleConfig(base_model=..., controlnets=[...], images=[...]))

Subpackages by job: ``controlnet.dataset`` (the builder, sources, card, push),
``controlnet.training`` (trainer, data pipeline, caches, run folder, export) and
``controlnet.bases`` (the SD 1.x/2.x and SDXL families the trainer and the sampler load);
``controlnet.sample`` is the sampler. The
names exported here are light: torch, diffusers and accelerate load when a function runs.
"""

from controlnet.sample import ControlNetSpec, SampleConfig, SampleResult, sample
from controlnet.training.trainer import TrainConfig, TrainResult, train

__all__ = ["ControlNetSpec", "SampleConfig", "SampleResult", "TrainConfig", "TrainResult", "sample", "train"]
