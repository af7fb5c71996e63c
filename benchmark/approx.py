r"""How close is an approximate curvature :math:`\hat F` to a reference :math:`F`?

All metrics work on curvature objects, without forming P x P matrices unless the reference is
stored dense, so they also apply to the tutorial network through the exact low-rank factor
:math:`F = U^\top U`. Sums are accumulated in float64.

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
from scipy.sparse.linalg import eigsh

from estimators import (
    Curvature,
    DenseCurvature,
    DiagCurvature,
    IdentityCurvature,
    KFACCurvature,
    LowRankCurvature,
)

CHUNK = 256
EIGH_MAX = 3000
"""Largest Gram matrix decomposed in full; beyond it, ``eigsh`` finds the top eigenpairs."""


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)


def frobenius_sq(c: Curvature) -> float:
    r""":math:`\|F\|_F^2`, in closed form for every structure."""
    if isinstance(c, IdentityCurvature):
        return c.scale**2 * c.numel
    if isinstance(c, DiagCurvature):
        return float(_f64(c.diag).square().sum())
    if isinstance(c, KFACCurvature):
        blocks = sum(
            float(_f64(b.G).square().sum()) * float(_f64(b.A).square().sum()) for b in c.blocks
        )
        return blocks + float(_f64(c.rest_diag).square().sum())
    if isinstance(c, DenseCurvature):
        return float(torch.linalg.vector_norm(c.matrix.reshape(-1), dtype=torch.float64)) ** 2
    if isinstance(c, LowRankCurvature):
        return _gram_frobenius_sq(c.factor)
    raise TypeError(f"no Frobenius norm for {type(c).__name__}")


def _gram_frobenius_sq(u: torch.Tensor) -> float:
    r""":math:`\|U^\top U\|_F^2 = \|U U^\top\|_F^2`, through the smaller Gram matrix in blocks."""
    if u.shape[0] > u.shape[1]:
        u = u.T
    total = 0.0
    for start in range(0, u.shape[0], CHUNK):
        total += float(_f64(u[start : start + CHUNK] @ u.T).square().sum())
    return total


def inner(a: Curvature, b: Curvature) -> float:
    r""":math:`\langle A, B\rangle = \operatorname{tr}(A B)` for symmetric A, B.

    Uses whichever side is cheap: a factor (:math:`\sum_r u_r^\top A u_r`), a diagonal or the
    identity (the other's diagonal); otherwise :math:`\sum_{ij} A_{ij} B_{ij}` over blocks of
    columns (P matrix-vector products: for models whose P x P fits anyway).
    """
    for x, y in ((a, b), (b, a)):
        if isinstance(y, IdentityCurvature):
            return y.scale * float(_f64(x.diagonal_flat()).sum())
        if isinstance(y, DiagCurvature):
            return float((_f64(x.diagonal_flat()) * _f64(y.diag)).sum())
    if isinstance(a, LowRankCurvature) and isinstance(b, LowRankCurvature):
        # tr(U_a^T U_a U_b^T U_b) = ||U_a U_b^T||_F^2: R_a R_b P flops, half of the general case
        total = 0.0
        for start in range(0, b.factor.shape[0], CHUNK):
            rows = b.factor[start : start + CHUNK]
            total += float(_f64(a.factor @ rows.T).square().sum())
        return total
    for x, y in ((a, b), (b, a)):
        if isinstance(y, LowRankCurvature):
            u = y.factor
            total = 0.0
            for start in range(0, u.shape[0], CHUNK):
                rows = u[start : start + CHUNK]
                total += float((_f64(x.matmat(rows.T.contiguous())) * _f64(rows.T)).sum())
            return total
    if isinstance(a, KFACCurvature) and isinstance(b, KFACCurvature) and _same_blocks(a, b):
        blocks = sum(
            float((_f64(x.G) * _f64(y.G)).sum()) * float((_f64(x.A) * _f64(y.A)).sum())
            for x, y in zip(a.blocks, b.blocks, strict=True)
        )
        return blocks + float((_f64(a.rest_diag) * _f64(b.rest_diag)).sum())
    if isinstance(a, DenseCurvature) and isinstance(b, DenseCurvature):
        return float((a.matrix * b.matrix).sum(dtype=torch.float64))
    if isinstance(a, DenseCurvature):  # read the dense one, multiply the other
        a, b = b, a
    if isinstance(a, KFACCurvature) and isinstance(b, DenseCurvature):
        return _kfac_dense_inner(a, b.matrix)
    dense_b = b.matrix if isinstance(b, DenseCurvature) else None
    total, p = 0.0, a.numel
    for start in range(0, p, CHUNK):  # columns of both, a block at a time
        stop = min(p, start + CHUNK)
        eye = torch.zeros(p, stop - start, dtype=a.layout.dtype, device=a.layout.device)
        eye[torch.arange(start, stop), torch.arange(stop - start)] = 1
        other = dense_b[:, start:stop] if dense_b is not None else b.matmat(eye)
        total += float((a.matmat(eye) * other).sum(dtype=torch.float64))
    return total


def _same_blocks(a: KFACCurvature, b: KFACCurvature) -> bool:
    """Same layers, same layout: then <G1 (x) A1, G2 (x) A2> = <G1, G2><A1, A2> block by block."""
    return [(x.weight, x.bias) for x in a.blocks] == [(y.weight, y.bias) for y in b.blocks] and (
        torch.equal(a.rest_index.cpu(), b.rest_index.cpu())
    )


def _kfac_dense_inner(k: KFACCurvature, m: torch.Tensor) -> float:
    r""":math:`\langle G \otimes A, M_{bb}\rangle = \sum G_{ac} A_{bd} M_{(a,b),(c,d)}`."""
    total = 0.0
    for blk in k.blocks:
        idx = blk.flat_index().to(m.device)
        d_out, d_a = blk.G.shape[0], blk.A.shape[0]
        sub = m[idx][:, idx].reshape(d_out, d_a, d_out, d_a).double()
        total += float(torch.einsum("ac,bd,abcd->", blk.G.double(), blk.A.double(), sub))
    rest = k.rest_index.to(m.device)
    return total + float((_f64(k.rest_diag) * _f64(m[rest, rest])).sum())


def relative_frobenius_error(
    approx: Curvature, ref: Curvature, ref_sq: float | None = None
) -> float:
    r""":math:`\|\hat F - F\|_F / \|F\|_F` (pass ``ref_sq`` = :math:`\|F\|_F^2` to reuse it)."""
    ref_sq = frobenius_sq(ref) if ref_sq is None else ref_sq
    diff_sq = frobenius_sq(approx) - 2 * inner(approx, ref) + ref_sq
    return math.sqrt(max(diff_sq, 0.0) / ref_sq)


def relative_trace_error(approx: Curvature, ref: Curvature) -> float:
    r""":math:`(\operatorname{tr}\hat F - \operatorname{tr} F) / \operatorname{tr} F` (signed)."""
    t_ref = float(_f64(ref.diagonal_flat()).sum())
    return (float(_f64(approx.diagonal_flat()).sum()) - t_ref) / t_ref


def relative_quadratic_error(approx: Curvature, ref: Curvature, delta: torch.Tensor) -> float:
    r""":math:`(\delta^\top \hat F \delta - \delta^\top F \delta) / \delta^\top F \delta`."""
    with torch.no_grad():
        q_ref = float(ref.quadratic_flat(delta))
        return (float(approx.quadratic_flat(delta)) - q_ref) / q_ref


def top_eigen(c: Curvature, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    r"""The ``k`` largest eigenvalues (descending) and their eigenvectors ``[P, k]``.

    Closed forms where they exist (identity: no distinguished eigenvectors, returned as None;
    diagonal: unit vectors); the Gram matrix :math:`U U^\top` for a factor; ``eigsh`` otherwise.
    """
    p = c.numel
    k = min(k, p - 1)
    if isinstance(c, IdentityCurvature):
        return np.full(k, c.scale), None
    if isinstance(c, DiagCurvature):
        d = c.diag.detach().cpu().double()
        idx = torch.argsort(d, descending=True)[:k]
        vecs = np.zeros((p, k))
        vecs[idx.numpy(), np.arange(k)] = 1.0
        return d[idx].numpy(), vecs
    if isinstance(c, LowRankCurvature):
        u = c.factor.detach().cpu()
        gram = _f64(u @ u.T).numpy()  # in the factor's dtype: float32 halves the cost
        u = _f64(u)
        k = min(k, gram.shape[0])
        if gram.shape[0] <= EIGH_MAX:
            vals, w = np.linalg.eigh(gram)
            vals, w = vals[::-1][:k], w[:, ::-1][:, :k]
        else:
            vals, w = eigsh(gram, k=k, which="LA")
            order = np.argsort(vals)[::-1]
            vals, w = vals[order], w[:, order]
        vecs = u.T.numpy() @ w / np.sqrt(np.maximum(vals, 1e-300))
        return np.maximum(vals, 0.0), vecs
    vals, vecs = eigsh(c.as_linear_operator(), k=k, which="LA")
    order = np.argsort(vals)[::-1]
    return vals[order].astype(np.float64), vecs[:, order].astype(np.float64)


def subspace_overlap(v: np.ndarray | None, v_hat: np.ndarray | None) -> float | None:
    r""":math:`\|V^\top \hat V\|_F^2 / k` for orthonormal ``[P, k]`` bases (None if undefined)."""
    if v is None or v_hat is None:
        return None
    k = min(v.shape[1], v_hat.shape[1])
    return float(np.square(v[:, :k].T @ v_hat[:, :k]).sum() / k)


def off_block_share(ref: Curvature, blocks: list[torch.Tensor]) -> float:
    r"""Share of :math:`\|F\|_F^2` outside the diagonal blocks given by flat index sets.

    :math:`1 - \sum_b \|F_{bb}\|_F^2 / \|F\|_F^2`; for a factor, :math:`\|F_{bb}\|_F =
    \|U_b^\top U_b\|_F` with :math:`U_b` the block's columns.
    """
    total = frobenius_sq(ref)
    inside = 0.0
    for idx in blocks:
        if isinstance(ref, LowRankCurvature):
            inside += _gram_frobenius_sq(ref.factor[:, idx])
        elif isinstance(ref, DenseCurvature):
            inside += float(_f64(ref.matrix[idx][:, idx]).square().sum())
        else:
            raise TypeError("the reference must be a dense matrix or a low-rank factor")
    return 1.0 - inside / total
