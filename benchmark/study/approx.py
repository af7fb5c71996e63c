r"""How close is an approximate curvature :math:`\hat F` to a reference :math:`F`?

All metrics work on curvature objects, without forming P x P matrices unless the reference is
stored dense, so they also apply to the tutorial network through the exact low-rank factor
:math:`F = U^\top U`. Sums are accumulated in float64. The closed forms live with each structure
(``Curvature.frobenius_sq``, ``inner``, ``top_eigen``, ``block_frobenius_sq``); this module
only combines them.

- relative Frobenius error :math:`\|\hat F - F\|_F / \|F\|_F`, from
  :math:`\|\hat F - F\|_F^2 = \|\hat F\|_F^2 - 2\langle \hat F, F\rangle + \|F\|_F^2`;
- relative trace error :math:`(\operatorname{tr}\hat F - \operatorname{tr}F)/\operatorname{tr}F`;
- top-k eigenvalues, and the overlap of the top-k eigenspaces
  :math:`\|V^\top \hat V\|_F^2 / k \in [0, 1]` (1: the same subspace);
- the penalty where it matters: :math:`(\delta^\top\hat F\delta - \delta^\top F\delta) /
  \delta^\top F\delta` for a given direction :math:`\delta`;
- the share of :math:`\|F\|_F^2` outside the per-layer diagonal blocks (what every
  block-diagonal approximation, KFAC included, ignores).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from estimators import Curvature


def frobenius_sq(c: Curvature) -> float:
    r""":math:`\|F\|_F^2` (``Curvature.frobenius_sq``: closed form per structure)."""
    return c.frobenius_sq()


def inner(a: Curvature, b: Curvature) -> float:
    r""":math:`\langle A, B\rangle = \operatorname{tr}(A B)` (``Curvature.inner``)."""
    return a.inner(b)


def top_eigen(c: Curvature, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``k`` largest eigenvalues, descending, and eigenvectors (``Curvature.top_eigen``)."""
    return c.top_eigen(k)


def relative_frobenius_error(
    approx: Curvature, ref: Curvature, ref_sq: float | None = None
) -> float:
    r""":math:`\|\hat F - F\|_F / \|F\|_F` (pass ``ref_sq`` = :math:`\|F\|_F^2` to reuse it)."""
    ref_sq = ref.frobenius_sq() if ref_sq is None else ref_sq
    diff_sq = approx.frobenius_sq() - 2 * approx.inner(ref) + ref_sq
    return math.sqrt(max(diff_sq, 0.0) / ref_sq)


def relative_trace_error(approx: Curvature, ref: Curvature) -> float:
    r""":math:`(\operatorname{tr}\hat F - \operatorname{tr} F) / \operatorname{tr} F` (signed)."""
    t_ref = float(ref.diagonal_flat().double().sum())
    return (float(approx.diagonal_flat().double().sum()) - t_ref) / t_ref


def relative_quadratic_error(approx: Curvature, ref: Curvature, delta: torch.Tensor) -> float:
    r""":math:`(\delta^\top \hat F \delta - \delta^\top F \delta) / \delta^\top F \delta`."""
    with torch.no_grad():
        q_ref = float(ref.quadratic_flat(delta))
        return (float(approx.quadratic_flat(delta)) - q_ref) / q_ref


def subspace_overlap(v: np.ndarray | None, v_hat: np.ndarray | None) -> float | None:
    r""":math:`\|V^\top \hat V\|_F^2 / k` for orthonormal ``[P, k]`` bases (None if undefined)."""
    if v is None or v_hat is None:
        return None
    k = min(v.shape[1], v_hat.shape[1])
    return float(np.square(v[:, :k].T @ v_hat[:, :k]).sum() / k)


def off_block_share(ref: Curvature, blocks: list[torch.Tensor]) -> float:
    r"""Share of :math:`\|F\|_F^2` outside the diagonal blocks given by flat index sets.

    :math:`1 - \sum_b \|F_{bb}\|_F^2 / \|F\|_F^2` (``Curvature.block_frobenius_sq``: for a
    factor, :math:`\|F_{bb}\|_F = \|U_b^\top U_b\|_F` with :math:`U_b` the block's columns).
    """
    total = ref.frobenius_sq()
    inside = sum(ref.block_frobenius_sq(idx) for idx in blocks)
    return 1.0 - inside / total
