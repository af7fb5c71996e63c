r"""How close is an approximate curvature :math:`\hat F` to a reference :math:`F`?

All metrics work on curvature objects, without forming P x P matrices unless the reference is
stored dense, so they also apply to larger networks through the exact low-rank factor
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

Against a dense reference F (part E), along F's own top eigenpairs :math:`(\lambda_i, v_i)`
(``top_eigen_dense``), with :math:`a_i = v_i^\top \hat F v_i` (``eigen_quadratics``):

- the top-k penalty error :math:`\sum_{i \le k} |a_i - \lambda_i| / \sum_{i \le k}
  \lambda_i` (``top_penalty_error``): how wrong the penalty is in the k directions where F
  penalises most (0: exact there; 1: no penalty there, or one of the wrong size);
- the same after the best rescaling :math:`\min_{s \ge 0} \sum_{i \le k} |s a_i -
  \lambda_i| / \sum_{i \le k} \lambda_i` (``rescaled_top_penalty_error``: what is left once
  lambda absorbs the scale);
- the flat share :math:`1 - \sum_{i \le k} a_i / \operatorname{tr}\hat F`
  (``flat_share``): the part of :math:`\hat F`'s penalty (its trace) that lies outside F's
  top-k eigenspace, in directions F deems nearly free (for F itself, :math:`1 - \sum_{i \le
  k}\lambda_i / \operatorname{tr} F`).

``curvature_label`` and ``object_key`` name what a measured curvature is (network, data,
estimator, options, N), so that the report joins a study row only with sweep runs that fitted the
same object.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from estimators import Curvature, DenseCurvature
from estimators.curvature import CHUNK, identity_columns

from ..outcomes import model_text, setting_text


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


def frobenius_errors(approx_sq: float, cross: float, ref_sq: float) -> tuple[float, float]:
    r"""Relative Frobenius error and its scale-free form from the three sums.

    :math:`\|\hat F - F\|_F / \|F\|_F` with :math:`\|\hat F - F\|_F^2 = \|\hat F\|_F^2 -
    2\langle \hat F, F\rangle + \|F\|_F^2`, and :math:`\min_s \|s\hat F - F\|_F/\|F\|_F =
    \sqrt{1 - \cos^2}` with :math:`\cos = \langle \hat F, F\rangle / (\|\hat F\|_F
    \|F\|_F)`.
    """
    cos = cross / math.sqrt(approx_sq * ref_sq) if approx_sq > 0 else 0.0
    rel = math.sqrt(max(approx_sq - 2 * cross + ref_sq, 0.0) / ref_sq)
    return rel, math.sqrt(max(0.0, 1.0 - cos**2))


def dense_inner(c: Curvature, matrix: torch.Tensor) -> float:
    r""":math:`\langle \hat F, F \rangle = \sum_{ij} \hat F_{ij} F_{ij}` with a dense ``[P, P]`` F.

    ``CHUNK`` columns at a time (:math:`\hat F` times identity columns, or read when dense),
    summed in float64: never a second P x P copy, whatever :math:`\hat F`'s structure. A
    diagonal :math:`\hat F` needs only F's diagonal.
    """
    if c.is_diagonal:
        return float((c.diagonal_flat().double() * matrix.diagonal().double()).sum())
    total, p = 0.0, matrix.shape[0]
    for start in range(0, p, CHUNK):
        stop = min(p, start + CHUNK)
        if isinstance(c, DenseCurvature):
            cols = c.matrix[:, start:stop]
        else:
            cols = c.matmat(identity_columns(c.layout, start, stop))
        total += float((cols.double() * matrix[:, start:stop].double()).sum())
    return total


def top_eigen_dense(
    matrix: torch.Tensor, k: int, oversample: int = 50, iterations: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    r"""The ``k`` largest eigenpairs of a dense symmetric PSD ``[P, P]`` matrix F.

    Subspace iteration: a seeded Gaussian block :math:`Q_0` of :math:`l = \min(k + \text{
    oversample}, P)` columns, :math:`Q_{i+1} = \operatorname{orth}(F Q_i)` ``iterations`` times,
    then Rayleigh-Ritz in float64: :math:`Q^\top F Q = W \Theta W^\top`, :math:`V = Q W`. Each
    Ritz value is the Rayleigh quotient :math:`v_i^\top F v_i` of its vector, so F scores 0 on
    its own top-k penalty error. Returns the values (descending), the vectors ``[P, k]`` (both
    float64) and the largest residual relative to the top eigenvalue, :math:`\max_i \|F v_i -
    \theta_i v_i\| / \theta_1` (0 for exact eigenpairs).
    """
    p = matrix.shape[0]
    k, width = min(k, p), min(k + oversample, p)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(p, width, generator=gen, dtype=torch.float64).to(matrix.dtype)
    q = torch.linalg.qr(q)[0]
    for _ in range(iterations):
        q = torch.linalg.qr(matrix @ q)[0]
    fq = (matrix @ q).double()
    theta, w = torch.linalg.eigh(q.double().T @ fq)
    theta, w = theta.flip(0)[:k], w.flip(1)[:, :k]
    vecs = q.double() @ w
    if k == 0:
        return theta.numpy(), vecs.numpy(), 0.0
    resid = (fq @ w - vecs * theta).norm(dim=0).max() / theta[0].abs().clamp_min(1e-300)
    return theta.numpy(), vecs.numpy(), float(resid)


def eigen_quadratics(c: Curvature, vecs: np.ndarray) -> np.ndarray:
    r""":math:`a_i = v_i^\top \hat F v_i` for each column :math:`v_i` of ``vecs`` ``[P, k]``."""
    v = torch.as_tensor(vecs, dtype=torch.float64)
    out = []
    for start in range(0, v.shape[1], CHUNK):
        block = v[:, start : start + CHUNK]
        product = c.matmat(block.to(c.layout.dtype)).double()
        out.append((product * block).sum(0))
    return torch.cat(out).numpy() if out else np.zeros(0)


def top_penalty_error(a: np.ndarray, lam: np.ndarray, k: int) -> float:
    r""":math:`\sum_{i \le k} |a_i - \lambda_i| / \sum_{i \le k} \lambda_i`."""
    a_k, lam_k = np.asarray(a[:k], dtype=float), np.asarray(lam[:k], dtype=float)
    return float(np.abs(a_k - lam_k).sum() / lam_k.sum())


def rescaled_top_penalty_error(a: np.ndarray, lam: np.ndarray, k: int) -> float:
    r""":math:`\min_{s \ge 0} \sum_{i \le k} |s a_i - \lambda_i| / \sum_{i \le k} \lambda_i`.

    :math:`\sum_i |s a_i - \lambda_i| = \sum_{a_i > 0} a_i |s - \lambda_i / a_i| + \sum_{a_i
    = 0} \lambda_i` is convex and piecewise linear in s: its minimum is at a weighted median of
    the ratios :math:`\lambda_i / a_i` with weights :math:`a_i` (every :math:`a_i \ge 0` for a
    PSD :math:`\hat F`).
    """
    a_k, lam_k = np.asarray(a[:k], dtype=float), np.asarray(lam[:k], dtype=float)
    pos = a_k > 0
    if not pos.any():
        return 1.0
    ratios, weights = lam_k[pos] / a_k[pos], a_k[pos]
    order = np.argsort(ratios)
    cumulative = np.cumsum(weights[order])
    s = ratios[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    return float(np.abs(s * a_k - lam_k).sum() / lam_k.sum())


def flat_share(a: np.ndarray, trace: float, k: int) -> float:
    r""":math:`1 - \sum_{i \le k} a_i / \operatorname{tr}\hat F`: the penalty outside F's top k."""
    return float(1.0 - np.asarray(a[:k], dtype=float).sum() / trace)


def curvature_label(config: Mapping[str, Any]) -> str:
    """``diag-exact``, ``lowrank-exact rank=20``, ``identity`` (l2): what a run config fits."""
    name = config.get("estimator") or "identity"
    opts = config.get("estimator_options") or {}
    text = " ".join(f"{k}={setting_text(v)}" for k, v in sorted(opts.items()))
    return f"{name} {text}" if text else name


def object_key(config: Mapping[str, Any]) -> str:
    """What a fitted curvature is a function of: network, data, estimator and options, and N.

    Equal keys for a study row and a sweep record: the same estimator on the same network with
    the same number of inputs (which the identity does not use). The weights it is fitted at
    differ by sequence and seed; the report says which ones the metrics come from.
    """
    name = config.get("estimator") or "identity"
    key = {
        "data": config.get("data"),
        "model": model_text(dict(config)),
        "estimator": curvature_label(config),
        "n": None if name == "identity" else config.get("fisher_samples"),
    }
    return json.dumps(key, sort_keys=True)
