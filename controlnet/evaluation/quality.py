"""Image quality: FID and KID of the samples against the dataset images they stand for, through
torchmetrics (``pip install torchmetrics[image]``, which brings torch-fidelity) and its
InceptionV3 with the standard TF-ported weights.

They run only when those weights are on this machine: a file given by ``--inception-weights``, or
torch-fidelity's download in the torch hub cache. They are never downloaded here; without them (or
without the library) the report says so in one line. The file is first read with
``torch.load(weights_only=True)``, so only a plain state dict is ever handed to torch-fidelity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["INCEPTION_FILE", "QualityMeter"]

#: torch-fidelity's InceptionV3 weights, as it names them in the torch hub cache
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
_NOT_COMPUTED = "FID/KID not computed: "


def _inception_path(explicit: str | None) -> Path | None:
    if explicit is not None:
        path = Path(explicit)
        return path if path.is_file() else None
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return cached if cached.is_file() else None


class QualityMeter:
    """Accumulates Inception features of real and generated images; :meth:`compute` gives FID and KID."""

    def __init__(self, fid: Any, kid: Any) -> None:
        self._fid, self._kid = fid, kid
        self.count = 0

    @classmethod
    def create(cls, weights: str | None) -> tuple[QualityMeter | None, str | None]:
        """A meter, or None and the one line saying why FID/KID cannot be computed."""
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
            from torchmetrics.image.kid import KernelInceptionDistance
        except ImportError as err:
            return None, _NOT_COMPUTED + f"torchmetrics with torch-fidelity is not installed ({err.name or err})"
        path = _inception_path(weights)
        if path is None:
            where = "at --inception-weights" if weights else "in the torch hub cache (give --inception-weights)"
            return None, _NOT_COMPUTED + f"the Inception weights ({INCEPTION_FILE}) are not on this machine {where}"
        import pickle

        import torch

        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
            return None, _NOT_COMPUTED + f"the Inception weights file is not a plain state dict ({type(err).__name__})"
        fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
        # KID shares FID's network (already loaded with these weights) instead of loading its own.
        kid = KernelInceptionDistance(feature=fid.inception, subset_size=1000)
        return cls(fid, kid), None

    def update(self, real: np.ndarray, generated: np.ndarray) -> None:
        """One pair of HxWx3 uint8 RGB images."""
        import torch

        for image, is_real in ((real, True), (generated, False)):
            batch = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
            self._fid.update(batch, real=is_real)
            self._kid.update(batch, real=is_real)
        self.count += 1

    def compute(self) -> tuple[dict[str, float] | None, str | None]:
        if self.count < 2:
            return None, _NOT_COMPUTED + f"{self.count} sample(s) with a dataset image; at least 2 are needed"
        # KID averages over random subsets of this size, which cannot exceed the number of samples.
        self._kid.subset_size = min(self._kid.subset_size, self.count)
        kid_mean, kid_std = self._kid.compute()
        return {"fid": float(self._fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std), "n": self.count}, None
