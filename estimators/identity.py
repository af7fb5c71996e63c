"""``identity``: F = s I (s = 1 when fitted). EWC with it is the L2 penalty to the old weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import NotImplementedType

import numpy as np
import torch
from torch import nn

from .curvature import DEFAULT_MEMORY_BUDGET, Curvature
from .estimator import Estimator
from .layout import ParamLayout
from .registry import Single, always_online


class IdentityCurvature(Curvature):
    """:math:`F = s I`; holds no tensors."""

    structure = "identity"
    is_diagonal = True
    inner_cost = 0

    def __init__(
        self, layout: ParamLayout, scale: float = 1.0, memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        super().__init__(layout, memory_budget)
        self.scale = float(scale)

    def _matmat(self, m: torch.Tensor) -> torch.Tensor:
        return self.scale * m

    def _quadratic(self, d: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.dot(d, d)

    def _apply_elementwise_(self, delta: list[torch.Tensor]) -> bool:
        """``delta_i <- s * delta_i`` (one foreach kernel)."""
        torch._foreach_mul_(delta, self.scale)
        return True

    @classmethod
    def _stacked_matmul(
        cls, curvatures: Sequence[Curvature]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``rows * [s_s]_s``: each run's scale on its row."""
        first = curvatures[0].layout
        scales = torch.tensor(
            [c.scale for c in curvatures],  # type: ignore[attr-defined]
            dtype=first.dtype,
            device=first.device,
        ).unsqueeze(1)
        return lambda rows: rows * scales

    def diagonal_flat(self) -> torch.Tensor:
        r""":math:`s \mathbf{1}`."""
        return torch.full(
            (self.numel,), self.scale, dtype=self.layout.dtype, device=self.layout.device
        )

    @property
    def nbytes(self) -> int:
        """Nothing is stored."""
        return 0

    def frobenius_sq(self) -> float:
        r""":math:`\|s I\|_F^2 = s^2 P`."""
        return self.scale**2 * self.numel

    def _inner(self, other: Curvature) -> float:
        r""":math:`\langle s I, G \rangle = s \operatorname{tr} G`, for any G."""
        return self.scale * float(other.diagonal_flat().double().sum())

    def _top_eigen(self, k: int) -> tuple[np.ndarray, None]:
        """``k`` times s; every vector is an eigenvector, so none is returned."""
        return np.full(k, self.scale), None

    def _block_frobenius_sq(self, index: torch.Tensor) -> float:
        r""":math:`s^2 |I|`."""
        return self.scale**2 * index.numel()

    def _add(self, other: Curvature, decay: float) -> IdentityCurvature | NotImplementedType:
        """``decay * s + s'`` when ``other`` is an identity too (a diagonal sum is diag's)."""
        if not isinstance(other, IdentityCurvature):
            return NotImplemented
        scale = decay * self.scale + other.scale
        return IdentityCurvature(self.layout, scale, self._budget_with(other))


class IdentityEstimator(Estimator):
    """Returns F = I for the model's trainable parameters; the data are not used."""

    def _fit(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        layout: ParamLayout,
    ) -> IdentityCurvature:
        return IdentityCurvature(layout, 1.0, self.options["memory_budget"])


DECLARATION = Single("identity", IdentityEstimator, ("forward", "memory_budget"), always_online)
"""``identity``: takes no data; always adds online."""
