r"""``diag-*``: the exact diagonal of the Fisher for the label mode.

:math:`F_{ii} = \frac{1}{N} \sum_n \sum_k (u_{nk})_i^2` where :math:`u_{nk} = J_n^\top S_{n,:,k}`
are the per-input, per-column gradients (see ``labels``). Closed-form layers compute it without
materialising :math:`u` (e.g. one matmul of :math:`g^2` and :math:`a^2` for ``nn.Linear``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import NotImplementedType
from typing import Any

import numpy as np
import torch

from .curvature import DEFAULT_MEMORY_BUDGET, Curvature
from .estimator import Accumulator
from .fitting import Capture, Plan
from .layout import ParamLayout
from .registry import GridStructure, always_online


class DiagCurvature(Curvature):
    r""":math:`F = \operatorname{diag}(f)`, stored as one flat ``[P]`` tensor."""

    structure = "diag"
    is_diagonal = True
    inner_cost = 0

    def __init__(
        self, layout: ParamLayout, diag: torch.Tensor, memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        super().__init__(layout, memory_budget)
        self.diag = diag
        self._views: list[torch.Tensor] | None = None

    def _matmat(self, m: torch.Tensor) -> torch.Tensor:
        return self.diag.unsqueeze(1) * m

    def _quadratic(self, d: torch.Tensor) -> torch.Tensor:
        return torch.dot(self.diag * d, d)

    def _apply_elementwise_(self, delta: list[torch.Tensor]) -> bool:
        """``delta_i <- f_i * delta_i`` (one foreach kernel); the views of f are made once."""
        if self._views is None:
            self._views = list(self.layout.unflatten(self.diag).values())
        torch._foreach_mul_(delta, self._views)
        return True

    @classmethod
    def _stacked_matmul(
        cls, curvatures: Sequence[Curvature]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``rows * [f_s]_s``: one elementwise product over the stacked diagonals ``[S, P]``."""
        stacked = torch.stack([c.diag for c in curvatures])  # type: ignore[attr-defined]
        return lambda rows: rows * stacked

    def diagonal_flat(self) -> torch.Tensor:
        """The stored diagonal."""
        return self.diag

    def _dense(self) -> torch.Tensor:
        return torch.diag(self.diag)

    @property
    def nbytes(self) -> int:
        """P scalars."""
        return self.diag.numel() * self.diag.element_size()

    def frobenius_sq(self) -> float:
        r""":math:`\sum_i f_i^2`."""
        return float(self.diag.double().square().sum())

    def _inner(self, other: Curvature) -> float:
        r""":math:`\langle \operatorname{diag}(f), G \rangle = \sum_i G_{ii} f_i`, for any G."""
        return float((other.diagonal_flat().double() * self.diag.double()).sum())

    def _top_eigen(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k largest entries; their unit vectors."""
        d = self.diag.detach().cpu().double()
        idx = torch.argsort(d, descending=True)[:k]
        vecs = np.zeros((self.numel, k))
        vecs[idx.numpy(), np.arange(k)] = 1.0
        return d[idx].numpy(), vecs

    def _block_frobenius_sq(self, index: torch.Tensor) -> float:
        r""":math:`\sum_{i \in I} f_i^2`."""
        return float(self.diag[index.to(self.diag.device)].double().square().sum())

    def _add(self, other: Curvature, decay: float) -> DiagCurvature | NotImplementedType:
        """``decay * f + diag(G)`` when G is diagonal (identity or diag)."""
        if not other.is_diagonal:
            return NotImplemented
        flat = decay * self.diagonal_flat() + other.diagonal_flat()
        return DiagCurvature(self.layout, flat, self._budget_with(other))

    def _radd(self, other: Curvature, decay: float) -> DiagCurvature | NotImplementedType:
        """``decay * diag(G) + f`` when G is diagonal (an identity, typically)."""
        if not other.is_diagonal:
            return NotImplemented
        flat = decay * other.diagonal_flat() + self.diagonal_flat()
        return DiagCurvature(other.layout, flat, self._budget_with(other))


def add_diagonal(flat: torch.Tensor, cap: Capture, layout: ParamLayout, skip: set[str]) -> None:
    """Add each parameter's exact diagonal contribution from ``cap`` to ``flat`` in place."""
    for lc in cap.layers:
        layer = lc.layer
        if skip.issuperset(layer.params.values()):
            continue
        attrs = tuple(a for a, n in layer.params.items() if n not in skip)
        for attr, value in layer.rule.diagonal(layer.module, lc.a, lc.g, attrs).items():
            flat[layout.slice(layer.params[attr])] += value.reshape(-1)
    for name, rows in cap.generic.items():
        flat[layout.slice(name)] += rows.square().sum((0, 1)).reshape(-1)


class DiagAccumulator(Accumulator):
    """Running sum of squared per-input gradients, per parameter."""

    def __init__(
        self, layout: ParamLayout, plan: Plan, columns: int, n_total: int, options: dict[str, Any]
    ) -> None:
        super().__init__(layout, plan, columns, n_total, options)
        self.flat = torch.zeros(layout.numel, dtype=layout.dtype, device=layout.device)

    def update(self, cap: Capture) -> None:
        """Add the chunk's squared gradients."""
        add_diagonal(self.flat, cap, self.layout, skip=set())

    def result(self) -> DiagCurvature:
        """The diagonal (already a mean: gradients carry 1/sqrt(N))."""
        return DiagCurvature(self.layout, self.flat, self.options["memory_budget"])


DECLARATION = GridStructure(
    "diag", DiagAccumulator, ("exact", "mc", "empirical", "argmax"), online=always_online
)
"""``diag-*``: every label mode; diagonals always add online."""
