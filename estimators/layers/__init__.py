"""Closed-form curvature rules per layer type (exact type match; all else uses ``torch.func``)."""

from __future__ import annotations

from torch import nn

from .base import LayerRule
from .batchnorm import BatchNormRule
from .conv2d import Conv2dRule
from .linear import LinearRule

RULES: dict[type[nn.Module], LayerRule] = {
    nn.Linear: LinearRule(),
    nn.Conv2d: Conv2dRule(),
    nn.BatchNorm1d: BatchNormRule(),
    nn.BatchNorm2d: BatchNormRule(),
    nn.BatchNorm3d: BatchNormRule(),
}

__all__ = ["RULES", "LayerRule"]
