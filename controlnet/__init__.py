"""ControlNet datasets, training and sampling.

    >>> import controlnet
    >>> controlnet.train(controlnet.TrainConfig(base_model=..., dataset=...))
    >>> controlnet.sample(controlnet.SampleConfig(base_model=..., controlnets=[...], images=[...]))

``controlnet.train`` and ``controlnet.sample`` name the functions; their modules stay importable as
``from controlnet.train import ...``. Both modules are light: torch, diffusers and accelerate load
when a function runs.
"""

from controlnet.sample import ControlNetSpec, SampleConfig, SampleResult, sample
from controlnet.train import TrainConfig, TrainResult, train

__all__ = ["ControlNetSpec", "SampleConfig", "SampleResult", "TrainConfig", "TrainResult", "sample", "train"]
