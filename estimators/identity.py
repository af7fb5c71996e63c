"""``identity``: F = s I (s = 1 when fitted). EWC with it is the L2 penalty to the old weights."""

from __future__ import annotations

import torch
from torch import nn

from .curvature import DEFAULT_MEMORY_BUDGET, Curvature
from .estimator import Estimator
from .layout import ParamLayout


class IdentityCurvature(Curvature):
    """:math:`F = s I`; holds no tensors."""

    structure = "identity"

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

    def diagonal_flat(self) -> torch.Tensor:
        r""":math:`s \mathbf{1}`."""
        return torch.full(
            (self.numel,), self.scale, dtype=self.layout.dtype, device=self.layout.device
        )

    @property
    def nbytes(self) -> int:
        """Nothing is stored."""
        return 0


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
