r"""``full-*``: the whole outer-product Fisher, dense or as an exact low-rank factor.

With per-input, per-column gradients :math:`u_{nk} = J_n^\top S_{n,:,k}` (see ``labels``),
:math:`F = \frac{1}{N}\sum_{n,k} u_{nk} u_{nk}^\top = U^\top U` where the rows of :math:`U` are
:math:`u_{nk}/\sqrt{N}`: R = N C rows for ``exact`` (per-input, per-class weighted gradients),
N ``mc_samples`` for ``mc``, N for ``empirical``.

Representation (option ``representation``): ``dense`` stores the P x P matrix (accumulated chunk by
chunk, never holding U); ``factor`` stores U (R x P), so that :math:`d^\top F d = \|U d\|^2` costs
one matrix-vector product and never P x P memory; ``auto`` takes dense when P^2 entries fit the
memory budget, else the factor. When neither fits, ``fit`` refuses before computing anything and
says how many bytes each would need.

Option ``output_curvature`` (``full-exact`` only): ``'per-input'`` (default) is the Fisher above;
``'mean'`` replaces each input's softmax curvature :math:`\operatorname{diag}(p_n) - p_n p_n^\top`
by its mean over the inputs, the averaged-output-curvature control of ``fullavg`` (same
representations, memory checks and online rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import NotImplementedType
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from torch import nn

from .curvature import CHUNK, DEFAULT_MEMORY_BUDGET, Curvature
from .errors import FisherMemoryError, format_bytes
from .estimator import Accumulator, GridEstimator
from .fitting import Capture, Plan
from .fullavg import fit_mean_output
from .labels import Exact, LabelMode
from .layout import ParamLayout
from .registry import GridStructure

WORK_BYTES = 64 * 1024**2
"""Bytes of per-input gradient rows built per chunk."""

EIGH_MAX = 3000
"""Largest Gram matrix decomposed in full; beyond it, ``eigsh`` finds the top eigenpairs."""

FACTOR_REFUSAL = "stacking low-rank factors grows with every task (that is separate mode)"
"""Why low-rank factors are not accumulated online."""


class DenseCurvature(Curvature):
    """F as a dense ``[P, P]`` matrix."""

    structure = "full-dense"
    inner_cost = 3

    def __init__(
        self, layout: ParamLayout, matrix: torch.Tensor, memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        super().__init__(layout, memory_budget)
        self.matrix = matrix

    def _matmat(self, m: torch.Tensor) -> torch.Tensor:
        return self.matrix @ m

    def _quadratic(self, d: torch.Tensor) -> torch.Tensor:
        return torch.dot(d, self.matrix @ d)

    def diagonal_flat(self) -> torch.Tensor:
        """The matrix's diagonal."""
        return self.matrix.diagonal().clone()

    def _dense(self) -> torch.Tensor:
        return self.matrix.clone()

    @property
    def nbytes(self) -> int:
        """P^2 scalars."""
        return self.matrix.numel() * self.matrix.element_size()

    def _columns(self, start: int, stop: int) -> torch.Tensor:
        """Read, not multiplied."""
        return self.matrix[:, start:stop]

    def frobenius_sq(self) -> float:
        r""":math:`\sum_{ij} F_{ij}^2`."""
        return float(torch.linalg.vector_norm(self.matrix.reshape(-1), dtype=torch.float64)) ** 2

    def _inner(self, other: Curvature) -> float | NotImplementedType:
        r""":math:`\sum_{ij} F_{ij} G_{ij}` with another dense matrix."""
        if not isinstance(other, DenseCurvature):
            return NotImplemented
        return float((self.matrix * other.matrix).sum(dtype=torch.float64))

    def _block_frobenius_sq(self, index: torch.Tensor) -> float:
        r""":math:`\sum_{i, j \in I} F_{ij}^2`, read from the matrix."""
        idx = index.to(self.matrix.device)
        return float(self.matrix[idx][:, idx].double().square().sum())

    def _add(self, other: Curvature, decay: float) -> DenseCurvature | NotImplementedType:
        """``decay * F + G`` for a dense or diagonal G."""
        if not _adds_densely(other):
            return NotImplemented
        matrix = decay * _as_matrix(self) + _as_matrix(other)
        return DenseCurvature(self.layout, matrix, self._budget_with(other))

    def _radd(self, other: Curvature, decay: float) -> DenseCurvature | NotImplementedType:
        """``decay * G + F`` for a dense or diagonal G."""
        if not _adds_densely(other):
            return NotImplemented
        matrix = decay * _as_matrix(other) + _as_matrix(self)
        return DenseCurvature(other.layout, matrix, self._budget_with(other))


def _adds_densely(c: Curvature) -> bool:
    """Whether a dense curvature holds the sum with ``c`` (a dense or diagonal one)."""
    return isinstance(c, DenseCurvature) or c.is_diagonal


def _as_matrix(c: Curvature) -> torch.Tensor:
    """The dense matrix of a dense curvature, or the diagonal matrix of a diagonal one."""
    return c.matrix if isinstance(c, DenseCurvature) else torch.diag(c.diagonal_flat())


class LowRankCurvature(Curvature):
    r""":math:`F = U^\top U` with the exact factor U ``[R, P]``."""

    structure = "full-factor"
    inner_cost = 1
    online_refusal = FACTOR_REFUSAL

    def __init__(
        self, layout: ParamLayout, factor: torch.Tensor, memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        super().__init__(layout, memory_budget)
        self.factor = factor

    def _matmat(self, m: torch.Tensor) -> torch.Tensor:
        return self.factor.T @ (self.factor @ m)

    def _quadratic(self, d: torch.Tensor) -> torch.Tensor:
        return (self.factor @ d).square().sum()

    def diagonal_flat(self) -> torch.Tensor:
        """Column sums of :math:`U^2`."""
        return self.factor.square().sum(0)

    def _dense(self) -> torch.Tensor:
        return self.factor.T @ self.factor

    @property
    def summary(self) -> str:
        """``full-factor R rows``: F has rank at most R."""
        return f"full-factor {self.factor.shape[0]} rows"

    def gram(self) -> torch.Tensor:
        r""":math:`U U^\top` (R x R): same non-zero eigenvalues as F, far cheaper when R << P."""
        return self.factor @ self.factor.T

    @property
    def nbytes(self) -> int:
        """R P scalars."""
        return self.factor.numel() * self.factor.element_size()

    def frobenius_sq(self) -> float:
        r""":math:`\|U^\top U\|_F^2 = \|U U^\top\|_F^2`."""
        return gram_frobenius_sq(self.factor)

    def _inner(self, other: Curvature) -> float:
        r""":math:`\langle U^\top U, G \rangle = \sum_r u_r^\top G u_r`, for any G.

        With another factor, :math:`\|V U^\top\|_F^2`: R_U R_V P flops, half of the general
        case. Rows of U are taken ``CHUNK`` at a time.
        """
        total = 0.0
        for start in range(0, self.factor.shape[0], CHUNK):
            rows = self.factor[start : start + CHUNK]
            if isinstance(other, LowRankCurvature):
                total += float((other.factor @ rows.T).double().square().sum())
            else:
                product = other.matmat(rows.T.contiguous())
                total += float((product.double() * rows.T.double()).sum())
        return total

    def _top_eigen(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        r"""Through the Gram matrix :math:`U U^\top = W \Lambda W^\top` (R x R).

        Eigenvectors :math:`V = U^\top W \Lambda^{-1/2}`; ``eigh`` up to ``EIGH_MAX`` rows,
        ``eigsh`` beyond; at most R eigenpairs.
        """
        u = self.factor.detach().cpu()
        gram = (u @ u.T).double().numpy()  # in the factor's dtype: float32 halves the cost
        k = min(k, gram.shape[0])
        if gram.shape[0] <= EIGH_MAX:
            vals, w = np.linalg.eigh(gram)
            vals, w = vals[::-1][:k], w[:, ::-1][:, :k]
        else:
            vals, w = eigsh(gram, k=k, which="LA")
            order = np.argsort(vals)[::-1]
            vals, w = vals[order], w[:, order]
        vecs = np.zeros((u.shape[1], k))
        for start in range(0, u.shape[0], CHUNK):  # U^T W in float64, never a float64 copy of U
            stop = min(start + CHUNK, u.shape[0])
            vecs += u[start:stop].double().numpy().T @ w[start:stop]
        vecs /= np.sqrt(np.maximum(vals, 1e-300))
        return np.maximum(vals, 0.0), vecs

    def _block_frobenius_sq(self, index: torch.Tensor) -> float:
        r""":math:`\|U_I^\top U_I\|_F^2` with :math:`U_I` the columns I of U."""
        return gram_frobenius_sq(self.factor[:, index.to(self.factor.device)])


def gram_frobenius_sq(u: torch.Tensor) -> float:
    r""":math:`\|U^\top U\|_F^2 = \|U U^\top\|_F^2`, through the smaller Gram matrix in blocks."""
    if u.shape[0] > u.shape[1]:
        u = u.T
    total = 0.0
    for start in range(0, u.shape[0], CHUNK):
        total += float((u[start : start + CHUNK] @ u.T).double().square().sum())
    return total


def fill_rows(rows: torch.Tensor, cap: Capture, layout: ParamLayout, columns: int) -> None:
    """Write the chunk's per-input, per-column gradients into ``rows`` ``[K n, P]``.

    Every column is written: parameters without a contribution in this chunk get zeros.
    """
    written = set()

    def view(name: str) -> torch.Tensor:
        written.add(name)
        return rows[:, layout.slice(name)].view(columns, cap.n, *layout.shapes[layout.index(name)])

    for lc in cap.layers:
        layer = lc.layer
        out = {attr: view(name) for attr, name in layer.params.items()}
        layer.rule.write_per_input(layer.module, lc.a, lc.g, out)
    for name, value in cap.generic.items():
        view(name).copy_(value)
    for name in layout.names:
        if name not in written:
            rows[:, layout.slice(name)] = 0


class FullAccumulator(Accumulator):
    """Dense sum of row outer products, or the factor's rows, as the budget allows."""

    def __init__(
        self, layout: ParamLayout, plan: Plan, columns: int, n_total: int, options: dict[str, Any]
    ) -> None:
        super().__init__(layout, plan, columns, n_total, options)
        kw = {"dtype": layout.dtype, "device": layout.device}
        self.kind = choose_representation(layout, columns, n_total, options)
        if self.kind == "dense":
            self.matrix = torch.zeros(layout.numel, layout.numel, **kw)
            self.rows = torch.empty(columns * self.chunk_size(), layout.numel, **kw)
        else:
            self.factor = torch.empty(columns * n_total, layout.numel, **kw)
        self.next_row = 0

    @classmethod
    def check_memory(
        cls, layout: ParamLayout, columns: int, n_inputs: int, options: dict[str, Any]
    ) -> None:
        """Refuses as ``fit`` would (``choose_representation``), before computing anything."""
        choose_representation(layout, columns, n_inputs, options)

    def chunk_size(self) -> int:
        """Inputs per pass, capped so each chunk's rows take at most ``WORK_BYTES``."""
        per_input = self.columns * self.layout.numel * self.layout.itemsize
        return max(1, min(self.options["chunk_size"], WORK_BYTES // per_input))

    def update(self, cap: Capture) -> None:
        """Write the chunk's rows into the factor, or add their outer products to the matrix."""
        k_n = self.columns * cap.n
        if self.kind == "factor":
            rows = self.factor[self.next_row : self.next_row + k_n]
            self.next_row += k_n
            fill_rows(rows, cap, self.layout, self.columns)
            return
        rows = self.rows[:k_n]  # one buffer, reused by every chunk
        fill_rows(rows, cap, self.layout, self.columns)
        self.matrix.addmm_(rows.T, rows)

    def result(self) -> Curvature:
        """``DenseCurvature`` or ``LowRankCurvature``."""
        budget = self.options["memory_budget"]
        if self.kind == "dense":
            return DenseCurvature(self.layout, self.matrix, budget)
        return LowRankCurvature(self.layout, self.factor, budget)


def choose_representation(
    layout: ParamLayout, columns: int, n_inputs: int, options: dict[str, Any]
) -> str:
    """``dense`` or ``factor`` under ``memory_budget``; refuses when the choice cannot fit.

    Raises:
        FisherMemoryError: with the bytes the dense matrix and the factor would need.
    """
    p, item, budget = layout.numel, layout.itemsize, options["memory_budget"]
    rows = columns * n_inputs
    dense, factor = p * p * item, rows * p * item
    wanted = options["representation"]
    if wanted in ("auto", "dense") and dense <= budget:
        return "dense"
    if wanted in ("auto", "factor") and factor <= budget:
        return "factor"
    what = {
        "auto": "the full Fisher (dense or low-rank factor)",
        "dense": "the dense full Fisher",
        "factor": "the full Fisher's low-rank factor",
    }[wanted]
    needed = {"auto": min(dense, factor), "dense": dense, "factor": factor}[wanted]
    per_input = columns * p * item
    fit_inputs = budget // per_input
    advice = (
        f"Raise memory_budget, or use at most {fit_inputs:,} inputs for the factor."
        if fit_inputs >= 1
        else f"Raise memory_budget to at least {format_bytes(per_input)}: even one input's rows "
        "need that."
    )
    hint = (
        f"P = {p:,} parameters: the dense P x P matrix needs {format_bytes(dense)}; the factor "
        f"({n_inputs:,} inputs x {columns} rows each, x P) needs {format_bytes(factor)}. {advice}"
    )
    raise FisherMemoryError(what, needed, budget, hint)


def online_rule(options: Mapping[str, Any]) -> str | None:
    """Online accumulation needs the dense representation: the factor's sum is separate mode."""
    if options["representation"] == "dense":
        return None
    return (
        f"representation {options['representation']!r} may give a low-rank factor, and "
        f"{FACTOR_REFUSAL}; pass representation='dense'"
    )


class FullEstimator(GridEstimator):
    """One pass (``GridEstimator``), or ``fullavg`` for ``output_curvature = 'mean'``."""

    def __init__(
        self,
        name: str,
        accumulator: type[Accumulator],
        labels: LabelMode,
        options: dict[str, Any],
    ) -> None:
        super().__init__(name, accumulator, labels, options)
        if options["output_curvature"] == "mean" and not isinstance(labels, Exact):
            raise ValueError(
                f"option 'output_curvature' = 'mean' is defined for full-exact only (the mean of "
                f"diag(p) - p p^T over the inputs), not for {name!r}"
            )

    def _fit(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        layout: ParamLayout,
    ) -> Curvature:
        if self.options["output_curvature"] == "mean":
            return fit_mean_output(self, model, inputs, targets, layout)
        return super()._fit(model, inputs, targets, layout)


DECLARATION = GridStructure(
    "full",
    FullAccumulator,
    ("exact", "mc", "empirical"),
    options=("representation", "output_curvature"),
    online=online_rule,
    estimator=FullEstimator,
)
"""``full-*``: dense matrix or exact low-rank factor; online only when dense. ``full-exact`` with
``output_curvature = 'mean'`` is the averaged-output-curvature control (``fullavg``)."""
