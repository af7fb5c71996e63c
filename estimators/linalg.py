"""Symmetric eigendecompositions that do not fail on ill-conditioned factors.

LAPACK's symmetric eigensolver (``torch.linalg.eigh``) can fail to converge in float32 on a
matrix with many (nearly) repeated eigenvalues, such as the input second moment A of a layer
whose inputs are mostly zero (an MLP's first layer on MNIST's blank borders). ``eigh`` retries
such a matrix in float64, where it converges, and returns the result in the input's dtype.
"""

from __future__ import annotations

import torch


def eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eigenvalues, eigenvectors)`` of a symmetric matrix (``torch.linalg.eigh``'s order).

    Tries the matrix's own dtype first (fast); on ``torch.linalg.LinAlgError`` retries in
    float64 and casts back.
    """
    try:
        return torch.linalg.eigh(matrix)
    except torch.linalg.LinAlgError:
        if matrix.dtype == torch.float64:
            raise
        vals, vecs = torch.linalg.eigh(matrix.double())
        return vals.to(matrix.dtype), vecs.to(matrix.dtype)


def eigh_deflated(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``eigh`` of a symmetric matrix, its exactly-zero rows split off first.

    A zero row i (and column: the matrix is symmetric) makes the unit vector :math:`e_i` an
    eigenvector with eigenvalue 0, so only the block of the other rows is decomposed. This is
    exact, not an approximation: with :math:`K` the kept rows and :math:`Z` the zero ones,
    :math:`M = P^\top \operatorname{diag}(M_{KK}, 0_{ZZ}) P` for a permutation P. A KFAC input
    factor has such rows wherever an input feature is zero on every fitted input (about 175 of
    MNIST's 784 pixels on its first 1,000 images), and since the decomposition costs
    :math:`O(d^3)`, deflating 22% of the rows halves it. The result is in ``torch.linalg.eigh``'s
    form: eigenvalues ascending, eigenvectors as columns.
    """
    zero = (matrix == 0).all(dim=1)
    n_zero = int(zero.sum())
    if n_zero == 0 or n_zero == matrix.shape[0]:
        return eigh(matrix)
    keep, gone = (~zero).nonzero().squeeze(1), zero.nonzero().squeeze(1)
    kept_values, kept_vectors = eigh(matrix[keep][:, keep])
    values = torch.cat([kept_values.new_zeros(n_zero), kept_values])
    # Rows [gone, keep] of the block-diagonal basis diag(I, V_kept), put back in row order.
    basis = torch.block_diag(
        torch.eye(n_zero, dtype=matrix.dtype, device=matrix.device), kept_vectors
    )
    vectors = torch.empty_like(basis).index_copy_(0, torch.cat([gone, keep]), basis)
    if n_zero and kept_values[0] < 0:  # rounding: a kept eigenvalue below the exact zeros
        order = values.argsort(stable=True)
        return values[order], vectors[:, order].contiguous()
    return values, vectors
