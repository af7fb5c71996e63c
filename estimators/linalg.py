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
