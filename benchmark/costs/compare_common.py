r"""What a row of another library is, and how Kronecker-structured fits become our flat diagonal.

Shared by ``costs.compare`` (BackPACK, nngeometry, the measurement) and
``costs.compare_curvlinops``.

A Kronecker or eigen-corrected block over a layer's :math:`[W \mid b]` (bias as the extra input
column, :math:`A = \operatorname{mean}_n \bar a_n \bar a_n^\top` with :math:`\bar a_n = [a_n; 1]`,
as in ``estimators.kfac``) has a diagonal that is itself a ``[d_out, d_in (+1)]`` matrix:

.. math::
    \operatorname{diag}(G \otimes A) = \operatorname{diag}(G) \operatorname{diag}(A)^\top,
    \qquad
    \operatorname{diag}\big((Q_G \otimes Q_A) \operatorname{diag}(S) (Q_G \otimes Q_A)^\top\big)
    = (Q_G \circ Q_G)\, S\, (Q_A \circ Q_A)^\top,

since :math:`F_{(o,i),(o,i)} = \sum_{pq} Q_{G,op}^2 S_{pq} Q_{A,iq}^2`. ``layer_diagonals``
lays such matrices out as our flat parameters (``named_parameters`` order, weights row-major, the
last column as the bias).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def as_diagonal(fitted: Any, model: nn.Module) -> torch.Tensor:
    """The default ``External.diagonal``: the fit already returned the flat diagonal."""
    del model
    return fitted


@dataclass(frozen=True)
class External:
    """One external method: its library, label, our counterpart, its fit and its diagonal.

    ``fit(model, x, y)`` is what is timed: the library's whole fit, nothing left for later.
    ``diagonal(fitted, model)`` turns its result into the flat diagonal in our layout, outside
    the timed call (for Kronecker and eigenbasis fits a few matrix products; ours are timed
    without it too). ``sampled`` rows draw labels and are checked against the exact quantity.
    """

    library: str
    label: str
    ours: str
    sampled: bool
    fit: Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]
    diagonal: Callable[[Any, nn.Module], torch.Tensor] = as_diagonal


def kron_block_diagonal(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    r"""The diagonal of :math:`G \otimes A` as ``[d_out, d_a]``: diag(G) diag(A)^T."""
    return torch.outer(g.diagonal(), a.diagonal())


def eigen_block_diagonal(qg: torch.Tensor, s: torch.Tensor, qa: torch.Tensor) -> torch.Tensor:
    r"""The diagonal of the eigen-corrected block: :math:`(Q_G \circ Q_G) S (Q_A \circ Q_A)^\top`.

    Eigenvectors are the columns of ``qg`` ``[d_out, d_out]`` and ``qa`` ``[d_a, d_a]``; ``s`` holds
    the eigenvalue of :math:`Q_{G,:p} \otimes Q_{A,:q}` at ``[p, q]`` (any shape, row-major).
    """
    return (qg * qg) @ s.reshape(qg.shape[1], qa.shape[1]) @ (qa * qa).T


def layer_diagonals(model: nn.Module, blocks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The flat diagonal from per-layer ``[d_out, d_in (+1)]`` diagonals, keyed by module name.

    Walks ``model.named_parameters()``: a layer's ``weight`` takes the first ``d_in`` columns
    (row-major), its ``bias`` the last one. Every parameter must belong to a block.
    """
    parts = []
    for name, param in model.named_parameters():
        module, _, kind = name.rpartition(".")
        if module not in blocks or kind not in ("weight", "bias"):
            raise ValueError(f"parameter {name} is in no Kronecker block")
        block = blocks[module]
        if kind == "weight":
            parts.append(block[:, : param[0].numel()].reshape(-1))
        else:
            parts.append(block[:, -1])
    return torch.cat(parts)
