"""Symmetric eigendecompositions that do not fail on ill-conditioned factors.

LAPACK's symmetric eigensolver (``torch.linalg.eigh``) can fail to converge in float32 on a
matrix with many (nearly) repeated eigenvalues, such as the input second moment A of a layer
whose inputs are mostly zero (an MLP's first layer on MNIST's blank borders). ``eigh`` retries
such a matrix in float64, where it converges, and returns the result in the input's dtype.
"""

from __future__ import annotations

from typing import NamedTuple

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


class Deflated(NamedTuple):
    """``eigh_deflated``'s result: ``torch.linalg.eigh``'s pair, and where the kept block went."""

    values: torch.Tensor
    """Eigenvalues, ascending."""
    vectors: torch.Tensor
    """Eigenvectors as columns, row-major (contiguous)."""
    live: torch.Tensor
    r"""Positions of the columns that come from the kept rows' block (the others are unit vectors
    :math:`e_i` of zero rows i), ascending: any :math:`x` that is zero on the zero rows has
    :math:`x^\top v = 0` for every column v outside ``live``."""


def zero_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Bool mask of the rows of ``matrix`` that are exactly zero.

    Only rows with a zero diagonal entry can be: those few are checked in full, not the matrix.
    """
    candidates = (matrix.diagonal() == 0).nonzero().squeeze(1)
    zero = torch.zeros(matrix.shape[0], dtype=torch.bool, device=matrix.device)
    zero[candidates] = (matrix[candidates] == 0).all(dim=1)
    return zero


def eigh_deflated(matrix: torch.Tensor) -> Deflated:
    r"""``eigh`` of a symmetric matrix, its exactly-zero rows split off first.

    A zero row i (and column: the matrix is symmetric) makes the unit vector :math:`e_i` an
    eigenvector with eigenvalue 0, so only the block of the other rows is decomposed. This is
    exact, not an approximation: with :math:`K` the kept rows and :math:`Z` the zero ones,
    :math:`M = P^\top \operatorname{diag}(M_{KK}, 0_{ZZ}) P` for a permutation P. A KFAC input
    factor has such rows wherever an input feature is zero on every fitted input (about 175 of
    MNIST's 784 pixels on its first 1,000 images), and since the decomposition costs
    :math:`O(d^3)`, deflating 22% of the rows halves it. The result is in ``torch.linalg.eigh``'s
    form (eigenvalues ascending, eigenvectors as columns) and row-major. Rounding can leave some
    of the kept block's eigenvalues below zero: those m columns come first, then the zero rows'
    unit vectors, then the rest of the kept block (as a stable sort of all eigenvalues would).
    """
    d = matrix.shape[0]
    zero = zero_rows(matrix)
    n_zero = int(zero.sum())
    columns = torch.arange(d, device=matrix.device)
    if n_zero == d:  # the zero matrix: every unit vector, nothing live
        eye = torch.eye(d, dtype=matrix.dtype, device=matrix.device)
        return Deflated(matrix.new_zeros(d), eye, columns[:0])
    if n_zero == 0:
        values, vectors = eigh(matrix)
        return Deflated(values, vectors.contiguous(), columns)
    keep, gone = (~zero).nonzero().squeeze(1), zero.nonzero().squeeze(1)
    kept_values, kept_vectors = eigh(matrix[keep][:, keep])
    m = int((kept_values < 0).sum())
    live = torch.cat([columns[:m], columns[m + n_zero :]])
    values = torch.cat([kept_values[:m], kept_values.new_zeros(n_zero), kept_values[m:]])
    vectors = matrix.new_zeros(d, d)
    vectors[gone, columns[m : m + n_zero]] = 1.0
    vectors[:, :m].index_copy_(0, keep, kept_vectors[:, :m])
    vectors[:, m + n_zero :].index_copy_(0, keep, kept_vectors[:, m:])
    return Deflated(values, vectors, live)
