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
"""

from __future__ import annotations

from typing import Any

import torch

from .curvature import DEFAULT_MEMORY_BUDGET, Curvature
from .errors import FisherMemoryError, format_bytes
from .estimator import Accumulator
from .fitting import Capture, Plan
from .layout import ParamLayout

WORK_BYTES = 64 * 1024**2
"""Bytes of per-input gradient rows built per chunk."""


class DenseCurvature(Curvature):
    """F as a dense ``[P, P]`` matrix."""

    structure = "full-dense"

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


class LowRankCurvature(Curvature):
    r""":math:`F = U^\top U` with the exact factor U ``[R, P]``."""

    structure = "full-factor"

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

    def gram(self) -> torch.Tensor:
        r""":math:`U U^\top` (R x R): same non-zero eigenvalues as F, far cheaper when R << P."""
        return self.factor @ self.factor.T

    @property
    def nbytes(self) -> int:
        """R P scalars."""
        return self.factor.numel() * self.factor.element_size()


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
