"""What a layer type must provide to get closed-form curvature from one batched pass.

Notation for one chunk of n inputs: ``a`` is what the layer's forward hook stored (its input,
unfolded patches, or normalised input), ``g`` is ``[K, n, ...]``: the gradients of the K weighted
losses (columns of the label factor, already scaled by 1/sqrt(N)) with respect to the layer's
output. A parameter's per-input, per-column gradient is then a closed form in ``a`` and ``g``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class LayerRule(ABC):
    """Closed forms for one layer type. Implement ``capture`` and ``per_input``.

    ``diagonal`` defaults to squaring ``per_input``; ``kfac`` defaults to "no Kronecker form".
    """

    def unsupported(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str | None:
        """Why this module cannot use the closed forms with these inputs, or None if it can."""
        return None

    @abstractmethod
    def capture(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(a, out)``: the data to keep, and the output tensor to differentiate."""

    @abstractmethod
    def per_input(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, attrs: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """Per-input, per-column gradients ``attr -> [K, n, *param.shape]``."""

    def write_per_input(
        self,
        module: nn.Module,
        a: torch.Tensor,
        g: torch.Tensor,
        out: dict[str, torch.Tensor],
    ) -> None:
        """Write ``per_input`` into the views ``out[attr]``, each ``[K, n, *shape]``."""
        for attr, value in self.per_input(module, a, g, tuple(out)).items():
            out[attr].copy_(value)

    def diagonal(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, attrs: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """Sum over columns and inputs of squared per-input gradients, ``attr -> param.shape``."""
        return {k: v.square().sum((0, 1)) for k, v in self.per_input(module, a, g, attrs).items()}

    def kfac(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, with_bias: bool
    ) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """Sums for the Kronecker factors: ``(sum a a^T, sum g g^T, inputs counted)``, or None."""
        return None

    def kfac_shape(self, module: nn.Module) -> tuple[int, int] | None:
        """``(d_out, d_in)`` of the layer's weight as a matrix, or None without a Kronecker form."""
        return None


def augment(a: torch.Tensor) -> torch.Tensor:
    """Append a column of ones: ``[m, d] -> [m, d + 1]`` (the bias as a weight on input 1)."""
    return torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
