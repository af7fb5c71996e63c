r"""``nn.Linear`` on inputs ``[n, d_in]``: closed forms from inputs ``a`` and output grads ``g``.

Per input and column: :math:`\nabla_W = g a^\top`, :math:`\nabla_b = g`. Hence

- diagonal: :math:`\sum_{k,n} g_{kn}^{2} (a_n^{2})^\top = (\sum_k g_k^{2})^\top a^{2}` (one matmul);
- KFAC (Martens & Grosse, 2015): :math:`F \approx G \otimes A` in the row-major layout of
  :math:`[W \mid b]`, with :math:`A = \operatorname{mean}_n [a_n; 1][a_n; 1]^\top` and
  :math:`G = \operatorname{mean}_n \sum_k g_{kn} g_{kn}^\top`.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import KroneckerSums, LayerRule


class LinearRule(LayerRule):
    """Closed forms for ``nn.Linear`` applied to a batch of vectors."""

    def unsupported(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str | None:
        """Only ``[n, d_in]`` inputs have per-input gradients of rank one."""
        if inputs[0].dim() != 2:
            return f"input has {inputs[0].dim()} dimensions, closed forms need [n, d_in]"
        return None

    def capture(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the input; differentiate the output."""
        return inputs[0].detach(), output

    def per_input(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, attrs: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        r""":math:`g a^\top` for the weight and :math:`g` for the bias, ``[K, n, ...]``."""
        out = {}
        if "weight" in attrs:
            out["weight"] = g.unsqueeze(-1) * a.unsqueeze(1)
        if "bias" in attrs:
            out["bias"] = g
        return out

    def write_per_input(
        self,
        module: nn.Module,
        a: torch.Tensor,
        g: torch.Tensor,
        out: dict[str, torch.Tensor],
    ) -> None:
        """Outer products straight into the destination rows: no temporary of the rows' size."""
        if "weight" in out:
            torch.mul(g.unsqueeze(-1), a.unsqueeze(1), out=out["weight"])
        if "bias" in out:
            out["bias"].copy_(g)

    def diagonal(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, attrs: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        r""":math:`(\sum_k g_k^2)^\top a^2` and :math:`\sum_{k,n} g^2`."""
        g2 = (g * g).sum(0)  # x * x is faster than square() on CPU
        out = {}
        if "weight" in attrs:
            out["weight"] = g2.T @ (a * a)
        if "bias" in attrs:
            out["bias"] = g2.sum(0)
        return out

    def kfac_update(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, sums: KroneckerSums
    ) -> None:
        r""":math:`\sum_n a_n a_n^\top` (and :math:`\sum_n a_n`) and :math:`\sum_{k,n} g g^\top`."""
        sums.add_inputs(a)
        g_rows = g.reshape(-1, g.shape[-1])
        sums.gg.addmm_(g_rows.T, g_rows)

    def kfac_shape(self, module: nn.Module) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        assert isinstance(module, nn.Linear)
        return module.out_features, module.in_features
