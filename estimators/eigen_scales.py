r"""EKFAC's blocks and its second pass: the second moments s in the KFAC eigenbases, by layer.

An ``EigenBlock`` is one layer's :math:`(Q_G \otimes Q_A) \operatorname{diag}(s) (Q_G \otimes
Q_A)^\top` over :math:`[W \mid b]` (``ekfac`` has the curvature it belongs to and the maths).
``layer_scales`` adds one chunk's contribution to a layer's s.

The s of a layer, from the chunk's captures (``layers``; gradients carry :math:`1/\sqrt{N}`):

- ``nn.Linear``: :math:`D_{nk} = g_{nk} \bar a_n^\top` has rank one, so :math:`s = \sum_n
  (\sum_k (Q_G^\top g_{nk})^{2}) ((Q_A^\top \bar a_n)^{2})^\top`, one matmul per chunk.
- ``nn.Conv2d``: :math:`D_{nk} = \sum_t g_{nkt} \bar a_{nt}^\top` sums over output positions t
  (patches :math:`\bar a_{nt}`), and the square of a sum is not a product of squares. Both sides
  are projected first, :math:`\tilde g = Q_G^\top g`, :math:`\tilde a = Q_A^\top \bar a`, then
  :math:`Q_G^\top D_{nk} Q_A = \sum_t \tilde g_{nkt} \tilde a_{nt}^\top` is formed per input and
  column (one batched matmul over positions), squared and summed, a few inputs at a time so that
  the ``[K, n, d_out, d_in + 1]`` work tensor stays under ``WORK_BYTES``.
- any other layer rule with a Kronecker form: the same from ``rule.per_input`` gradients.

``LiveBlock`` restricts the pass to the eigenvectors that are not a zero row's unit vector (whose
s is exactly zero). On such a sub-block the shapes below read ``g_live``/``a_live`` for
``d_out``/``d_a`` in the eigen-coordinates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .fitting import PlannedLayer
from .kfac import KroneckerBlock
from .layers.conv2d import Conv2dRule
from .layers.linear import LinearRule

WORK_BYTES = 64 * 1024**2
"""Bytes of projected per-input gradient matrices built at once (Conv2d and generic layers)."""


@dataclass
class EigenBlock:
    r""":math:`(Q_G \otimes Q_A) \operatorname{diag}(s) (Q_G \otimes Q_A)^\top` over ``[W | b]``.

    ``QA`` ``[d_a, d_a]`` and ``QG`` ``[d_out, d_out]`` hold eigenvectors as columns; ``S``
    ``[d_out, d_a]`` is the eigenvalue of :math:`Q_{G,:p} \otimes Q_{A,:q}` at ``[p, q]``
    (row-major, like :math:`[W \mid b]`); ``weight``/``bias`` are slices of the flat layout.
    A ``LiveBlock``'s sub-block keeps some columns of each basis only: ``[d_a, a_live]``,
    ``[d_out, g_live]`` and ``S`` ``[g_live, a_live]``.
    """

    weight: slice
    bias: slice | None
    QA: torch.Tensor
    QG: torch.Tensor
    S: torch.Tensor

    @property
    def frame(self) -> KroneckerBlock:
        """The block's positions (``gather``/``scatter``/``flat_index``), shared with KFAC."""
        first = (0,) * (self.QA.dim() - 2)  # stacked blocks (``_stacked_matmul``): one of them
        return KroneckerBlock(self.weight, self.bias, self.QA[first], self.QG[first])

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`Q_G^\top X Q_A`: ``[..., d_out, d_a]`` matrices in eigen-coordinates."""
        return self.QG.mT @ x @ self.QA

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`Q_G (S \circ Q_G^\top X Q_A) Q_A^\top` (F vec X) for ``[k, d_out, d_a]``."""
        return self.QG @ (self.S * self.rotate(x)) @ self.QA.mT


def _projected_inputs(a: torch.Tensor, qa: torch.Tensor, with_bias: bool) -> torch.Tensor:
    r""":math:`\bar a^\top Q_A` for ``a`` ``[n, d_in, ...]`` (features on dim 1): ``[n, ..., d_a]``.

    :math:`\bar a = [a; 1]` is never built: the bias row of :math:`Q_A` is added as a constant.
    """
    d_in = a.shape[1]
    out = a.movedim(1, -1) @ qa[:d_in]
    return out + qa[d_in] if with_bias else out


def _add_squares(s: torch.Tensor, make: Callable[[slice], torch.Tensor], n: int, per: int) -> None:
    """``s += sum over k, n of make(inputs)**2`` for ``[K, m, d_out, d_a]`` slabs of inputs."""
    step = max(1, WORK_BYTES // max(1, per * s.element_size()))
    for start in range(0, n, step):
        d = make(slice(start, min(n, start + step)))
        s += (d * d).sum((0, 1))


def linear_scales(
    a: torch.Tensor, g: torch.Tensor, blk: EigenBlock, with_bias: bool
) -> torch.Tensor:
    r"""``nn.Linear``: :math:`(\sum_k (g_k Q_G)^{2})^\top (\bar a Q_A)^{2}`, one matmul.

    ``a`` ``[n, d_in]``, ``g`` ``[K, n, d_out]``; returns the chunk's ``[d_out, d_a]``.
    """
    gp = g @ blk.QG
    ap = _projected_inputs(a, blk.QA, with_bias)
    return (gp * gp).sum(0).T @ (ap * ap)


def conv_scales(a: torch.Tensor, g: torch.Tensor, blk: EigenBlock, with_bias: bool) -> torch.Tensor:
    r"""``nn.Conv2d``: :math:`\sum_{n,k} (\sum_t \tilde g_{nkt} \tilde a_{nt}^\top)^{2}`.

    ``a`` ``[n, d_in, T]`` patches, ``g`` ``[K, n, d_out, H, W]``; both projected once, then per
    input and column one ``[d_out, T] @ [T, d_a]`` product, a bounded number of inputs at a time.
    """
    gp = torch.einsum("knot,op->knpt", g.flatten(3), blk.QG)  # [K, n, d_out, T]
    ap = _projected_inputs(a, blk.QA, with_bias)  # [n, T, d_a]
    s = torch.zeros_like(blk.S)
    _add_squares(s, lambda i: gp[:, i] @ ap[i], a.shape[0], g.shape[0] * blk.S.numel())
    return s


def generic_scales(
    layer: PlannedLayer, a: torch.Tensor, g: torch.Tensor, blk: EigenBlock
) -> torch.Tensor:
    r"""Any rule with a Kronecker form: :math:`(Q_G^\top D_{nk} Q_A)^{2}` from ``per_input``."""
    attrs = layer.attrs
    d_out, d_a = blk.QG.shape[0], blk.QA.shape[0]  # the layer's sizes (``blk`` may be live)
    s = torch.zeros_like(blk.S)

    def rotated(i: slice) -> torch.Tensor:
        k = g.shape[0]
        grads = layer.rule.per_input(layer.module, a[i], g[:, i], attrs)
        parts = [grads["weight"].reshape(k, -1, d_out, d_a - ("bias" in grads))]
        if "bias" in grads:
            parts.append(grads["bias"].reshape(k, -1, d_out, 1))
        return blk.rotate(torch.cat(parts, dim=3))

    _add_squares(s, rotated, a.shape[0], g.shape[0] * blk.S.numel())
    return s


def layer_scales(
    layer: PlannedLayer, a: torch.Tensor, g: torch.Tensor, blk: EigenBlock
) -> torch.Tensor:
    """One chunk's contribution to a layer's s, by the layer's rule (see the module docstring)."""
    with_bias = blk.bias is not None
    if isinstance(layer.rule, LinearRule):
        return linear_scales(a, g, blk, with_bias)
    if isinstance(layer.rule, Conv2dRule):
        return conv_scales(a, g, blk, with_bias)
    return generic_scales(layer, a, g, blk)


@dataclass
class LiveBlock:
    r"""A layer's eigenvectors but the zero rows' unit vectors, where the s pass accumulates.

    A column :math:`e_i` of :math:`Q_A` split off for a zero row i of A (``eigh_deflated``) has
    :math:`e_i^\top \bar a_n = \bar a_{ni} = 0` on every fitted input, so :math:`s_{pq} = 0`
    exactly in its column; likewise for :math:`Q_G` and output units whose gradient is always
    zero. Linear and Conv2d layers project onto the ``live`` columns only (on MNIST's first
    layer, 610 of 785), and ``scatter`` puts the sub-block's s in place at the end. Other rules
    project whole per-input gradients: they use the whole block.
    """

    block: EigenBlock
    """The live columns of both bases (contiguous copies; ``blk`` itself when ``whole``) and their
    running s."""
    rows: torch.Tensor
    cols: torch.Tensor
    whole: bool

    @classmethod
    def of(
        cls, layer: PlannedLayer, blk: EigenBlock, rows: torch.Tensor, cols: torch.Tensor
    ) -> LiveBlock:
        """The live sub-block of ``blk`` (live columns ``rows`` of Q_G, ``cols`` of Q_A)."""
        d_out, d_a = blk.S.shape
        whole = (len(rows), len(cols)) == (d_out, d_a)
        if whole or not isinstance(layer.rule, (LinearRule, Conv2dRule)):
            return cls(blk, rows, cols, True)
        QA, QG = blk.QA[:, cols].contiguous(), blk.QG[:, rows].contiguous()
        sub = EigenBlock(blk.weight, blk.bias, QA, QG, blk.S.new_zeros(len(rows), len(cols)))
        return cls(sub, rows, cols, False)

    def scatter(self, blk: EigenBlock) -> None:
        """Write the accumulated s into ``blk.S`` (a no-op when the s pass used ``blk`` itself)."""
        if not self.whole:
            blk.S[self.rows.unsqueeze(1), self.cols.unsqueeze(0)] = self.block.S
