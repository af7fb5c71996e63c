r"""BatchNorm in eval mode (running statistics): closed forms for the affine parameters.

In eval mode :math:`y = \gamma \hat x + \beta` with :math:`\hat x = (x - \mu_{run}) /
\sqrt{\sigma^2_{run} + \epsilon}` per channel, so each input's gradients are
:math:`\nabla_\gamma = \sum_s g_s \hat x_s` and :math:`\nabla_\beta = \sum_s g_s` (sums over spatial
positions s). There is no Kronecker form: KFAC uses this exact diagonal.

The forward hook recomputes the output with elementwise operations (equal to BatchNorm's eval
output) so that the batched backward over K label columns is vectorised: PyTorch has no batching
rule for the fused BatchNorm backward and would loop over the columns.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import LayerRule


def _channel_view(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Reshape a per-channel vector ``[C]`` to broadcast over ``[n, C, *spatial]``."""
    return t.reshape(1, -1, *([1] * (dim - 2)))


class BatchNormRule(LayerRule):
    """Closed forms for ``nn.BatchNorm1d/2d/3d`` affine parameters with running statistics."""

    def unsupported(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str | None:
        """Needs running statistics (eval mode uses them) and a batch dimension."""
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        if module.running_mean is None or module.running_var is None:
            return "no running statistics"
        if inputs[0].dim() < 2:
            return "input without a batch dimension"
        return None

    def capture(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Keep :math:`\hat x`; return the recomputed output :math:`\gamma \hat x + \beta`."""
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        x = inputs[0]
        dim = x.dim()
        assert module.running_mean is not None
        assert module.running_var is not None
        mean = _channel_view(module.running_mean, dim)
        inv_std = torch.rsqrt(module.running_var + module.eps)
        with torch.no_grad():
            x_hat = (x - mean) * _channel_view(inv_std, dim)
        scale = inv_std if module.weight is None else inv_std * module.weight
        out = (x - mean) * _channel_view(scale, dim)  # one multiply to backpropagate through
        if module.bias is not None:
            out = out + _channel_view(module.bias, dim)
        return x_hat, out

    def per_input(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, attrs: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        r""":math:`\sum_s g_s \hat x_s` and :math:`\sum_s g_s`, ``[K, n, C]``."""
        spatial = tuple(range(3, g.dim()))
        out = {}
        if "weight" in attrs:
            out["weight"] = (g * a).sum(spatial) if spatial else g * a
        if "bias" in attrs:
            out["bias"] = g.sum(spatial) if spatial else g
        return out

    def diagonal(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, attrs: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        r"""Without spatial positions, :math:`\sum_n \hat x_n^2 \sum_k g_{kn}^2`; else squares."""
        if g.dim() > 3:
            return super().diagonal(module, a, g, attrs)
        g2 = (g * g).sum(0)
        out = {}
        if "weight" in attrs:
            out["weight"] = (g2 * (a * a)).sum(0)
        if "bias" in attrs:
            out["bias"] = g2.sum(0)
        return out
