"""TensorFlow "SAME" padding, used by networks ported from TF (BiT/ViT-hybrid, tf_efficientnet)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["pad_same", "same_padding"]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Padding before and after one side so that the output has ``ceil(size / stride)`` cells;
    the odd pixel goes after, as in TensorFlow."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)
