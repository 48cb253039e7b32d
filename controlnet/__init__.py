"""ControlNet datasets, training, sampling and evaluation.

    >>> import controlnet
    >>> controlnet.train(controlnet.TrainConfig(base_model=..., dataset=...))
    >>> controlnet.sample(controlnet.SampleConfig(base_model=..., controlnets=[...], images=[...]))
    >>> controlnet.evaluate(controlnet.EvalConfig(samples=Path("samples"), output=Path("report.json")))

Subpackages by job: ``controlnet.dataset`` (the builder, sources, card, push),
``controlnet.training`` (trainer, data pipeline, export) and ``controlnet.evaluation`` (how well
samples follow their conditions); ``controlnet.sample`` is the sampler. The
names exported here are light: torch, diffusers and accelerate load when a function runs.
"""

from controlnet.evaluation import EvalConfig, EvalResult, evaluate
from controlnet.sample import ControlNetSpec, SampleConfig, SampleResult, sample
from controlnet.training.trainer import TrainConfig, TrainResult, train

__all__ = [
    "ControlNetSpec",
    "EvalConfig",
    "EvalResult",
    "SampleConfig",
    "SampleResult",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "sample",
    "train",
]
