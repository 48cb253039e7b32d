"""The pix2pix U-Net generator used by the v1.1 anime line-art annotator.

Architecture: ``UnetGenerator`` of Isola et al., "Image-to-Image Translation with Conditional
Adversarial Networks" (CVPR 2017; pytorch-CycleGAN-and-pix2pix, BSD), built as ControlNet v1.1
builds it: 3 -> 1 channels, 8 downsamplings, 64 base filters, InstanceNorm without affine
parameters or running statistics (so every conv has a bias), no dropout, tanh output.

Each level is ``[LeakyReLU, conv down, norm] + inner level + [ReLU, conv-transpose up, norm]``
with the input concatenated to the result (the skip). Module names (``model.model.1.model.3...``)
follow the published ``netG.pth`` once its ``module.`` prefix is stripped.

Spatial sizes must be multiples of 256.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UnetGenerator"]


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class UnetLevel(nn.Module):
    """One U-Net level around ``submodule`` (None at the bottleneck). Inner levels return their
    activated input concatenated with their output; the outermost returns the pre-tanh map."""

    def __init__(
        self, outer: int, inner: int, submodule: UnetLevel | None, *, in_channels: int | None = None, outermost: bool = False
    ) -> None:
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(in_channels or outer, inner, kernel_size=4, stride=2, padding=1)
        if outermost:
            assert submodule is not None
            up = nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1)
            # The published model ends with a parameter-free Tanh here; forward callers apply it.
            layers: list[nn.Module] = [down, submodule, nn.ReLU(), up]
        elif submodule is None:
            up = nn.ConvTranspose2d(inner, outer, kernel_size=4, stride=2, padding=1)
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, _norm(outer)]
        else:
            up = nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1)
            layers = [nn.LeakyReLU(0.2), down, _norm(inner), submodule, nn.ReLU(), up, _norm(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        # Upstream's first LeakyReLU is in place, so its skip carries the *activated* input;
        # that is made explicit here.
        activated = self.model[0](x)
        return torch.cat([activated, self.model[1:](activated)], 1)


class UnetGenerator(nn.Module):
    """``(N, 3, H, W)`` RGB in [-1, 1] -> ``(N, 1, H, W)`` line map in [-1, 1], dark lines on light."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, downsamplings: int = 8, filters: int = 64) -> None:
        super().__init__()
        level = UnetLevel(filters * 8, filters * 8, None)
        for _ in range(downsamplings - 5):
            level = UnetLevel(filters * 8, filters * 8, level)
        for multiple in (4, 2, 1):
            level = UnetLevel(filters * multiple, filters * multiple * 2, level)
        self.model = UnetLevel(out_channels, filters, level, in_channels=in_channels, outermost=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.logits(x))
