"""What a layer type must provide to get closed-form curvature from one batched pass.

Notation for one chunk of n inputs: ``a`` is what the layer's forward hook stored (its input,
unfolded patches, or normalised input), ``g`` is ``[K, n, ...]``: the gradients of the K weighted
losses (columns of the label factor, already scaled by 1/sqrt(N)) with respect to the layer's
output. A parameter's per-input, per-column gradient is then a closed form in ``a`` and ``g``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


class LayerRule(ABC):
    """Closed forms for one layer type. Implement ``capture`` and ``per_input``.

    ``diagonal`` defaults to squaring ``per_input``; layers with a Kronecker form implement
    ``kfac_shape`` and ``kfac_update``.
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

    def kfac_update(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, sums: KroneckerSums
    ) -> None:
        """Add the chunk's Kronecker-factor sums into ``sums`` (layers with a Kronecker form)."""
        raise NotImplementedError(f"{type(module).__name__} has no Kronecker form")

    def kfac_shape(self, module: nn.Module) -> tuple[int, int] | None:
        """``(d_out, d_in)`` of the layer's weight as a matrix, or None without a Kronecker form."""
        return None


@dataclass
class KroneckerSums:
    r"""Running sums for one layer's Kronecker factors, updated in place chunk by chunk.

    ``aa`` = :math:`\sum a a^\top`, ``a_sum`` = :math:`\sum a`, ``count`` = number of rows
    summed (inputs, or inputs x positions), ``gg`` = :math:`\sum g g^\top` (``g`` carries
    :math:`1/\sqrt{N}` already). ``factors`` assembles :math:`A` (bias-augmented, a mean over the
    N inputs) and :math:`G`.
    """

    aa: torch.Tensor
    a_sum: torch.Tensor
    gg: torch.Tensor
    count: int = 0

    @classmethod
    def zeros(cls, d_out: int, d_in: int, like: torch.Tensor) -> KroneckerSums:
        """Empty sums for a ``d_out x d_in`` weight."""
        kw = {"dtype": like.dtype, "device": like.device}
        return cls(
            torch.zeros(d_in, d_in, **kw), torch.zeros(d_in, **kw), torch.zeros(d_out, d_out, **kw)
        )

    def add_inputs(self, rows: torch.Tensor) -> None:
        """Add input rows ``[m, d_in]`` (no copy: ``[a; 1]`` is assembled only at the end)."""
        self.aa.addmm_(rows.T, rows)
        self.a_sum += rows.sum(0)
        self.count += rows.shape[0]

    def factors(self, n_inputs: int, with_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(A, G)` with :math:`A = \frac{1}{N}\sum \bar a \bar a^\top`."""
        if not with_bias:
            return self.aa / n_inputs, self.gg
        d = self.aa.shape[0]
        a = self.aa.new_empty(d + 1, d + 1)
        a[:d, :d] = self.aa
        a[:d, d] = self.a_sum
        a[d, :d] = self.a_sum
        a[d, d] = self.count
        return a / n_inputs, self.gg
