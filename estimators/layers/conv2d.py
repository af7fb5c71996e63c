r"""``nn.Conv2d`` (groups 1, zero padding): closed forms from unfolded patches.

With patches :math:`a_{n,t} \in \mathbb{R}^{C_{in} k_h k_w}` at output positions :math:`t = 1..T`
(``F.unfold``, channel-major, matching the row-major weight ``[C_out, C_in, k_h, k_w]``) and output
gradients :math:`g_{k,n,t}`, the per-input gradient is :math:`\nabla_W = \sum_t g_t a_t^\top`,
:math:`\nabla_b = \sum_t g_t`.

KFAC uses the KFC factors of Grosse & Martens (2016), "A Kronecker-factored approximate Fisher
matrix for convolution layers" (the "expand" convention): patches are treated as inputs,

.. math::
    A = \operatorname{mean}_n \sum_t \bar a_{n,t} \bar a_{n,t}^\top, \qquad
    G = \operatorname{mean}_n \frac{1}{T} \sum_t \sum_k g_{k,n,t} g_{k,n,t}^\top,

so the sum over positions sits in ``A`` and the mean over positions in ``G``; with ``T = 1`` this
is exactly the ``nn.Linear`` case. It is exact only under KFC's spatial independence assumptions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import KroneckerSums, LayerRule


def conv_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` zero padding of the input, as ``F.pad`` takes it.

    Explicit padding is symmetric; ``'same'`` puts ``total // 2`` before and the rest after, as
    ``nn.Conv2d`` does.
    """
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0, 0, 0)
        pads: list[int] = []
        for d, k in zip(reversed(module.dilation), reversed(module.kernel_size), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return pads[0], pads[1], pads[2], pads[3]
    ph, pw = module.padding
    return (pw, pw, ph, ph)


class Conv2dRule(LayerRule):
    """Closed forms for ``nn.Conv2d`` via ``F.unfold`` patches."""

    def unsupported(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str | None:
        """Grouped convolutions and non-zero padding modes use the generic path."""
        assert isinstance(module, nn.Conv2d)
        if module.groups != 1:
            return "groups != 1"
        if module.padding_mode != "zeros":
            return f"padding_mode {module.padding_mode!r}"
        if inputs[0].dim() != 4:
            return f"input has {inputs[0].dim()} dimensions, closed forms need [n, C, H, W]"
        return None

    def capture(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the unfolded patches ``[n, C_in k_h k_w, T]``; differentiate the output."""
        assert isinstance(module, nn.Conv2d)
        x = inputs[0].detach()
        pads = conv_padding(module)
        if any(pads):
            x = F.pad(x, pads)
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)
        return patches, output

    def per_input(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, attrs: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        r""":math:`\sum_t g_t a_t^\top` and :math:`\sum_t g_t`, ``[K, n, ...]``."""
        assert isinstance(module, nn.Conv2d)
        g = g.flatten(3)  # [K, n, C_out, T]
        out = {}
        if "weight" in attrs:
            w = torch.einsum("knot,nit->knoi", g, a)
            out["weight"] = w.reshape(*g.shape[:2], *module.weight.shape)
        if "bias" in attrs:
            out["bias"] = g.sum(-1)
        return out

    def kfac_update(
        self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, sums: KroneckerSums
    ) -> None:
        r"""Patches as input rows; :math:`\frac{1}{T}\sum_{k,n,t} g g^\top`."""
        n, d, t = a.shape
        sums.add_inputs(a.transpose(1, 2).reshape(n * t, d))
        g_rows = g.flatten(3).transpose(2, 3).reshape(-1, g.shape[2])
        sums.gg.addmm_(g_rows.T, g_rows, alpha=1.0 / t)

    def kfac_shape(self, module: nn.Module) -> tuple[int, int]:
        """``(C_out, C_in k_h k_w)``."""
        assert isinstance(module, nn.Conv2d)
        return module.out_channels, module.weight[0].numel()
