"""One curvature of every structure on a tiny float64 model, and two that take generic paths.

``ToyCurvature`` is a dense matrix that declares no closed form at all (only the four abstract
members), so every metric and sum falls back to the base class; ``reblocked`` is a KFAC curvature
with other blocks than the fitted one, so the KFAC x KFAC closed form does not apply.
"""

from __future__ import annotations

import torch
from torch import nn

import estimators
from estimators import Curvature, IdentityCurvature, KFACCurvature
from estimators.layout import ParamLayout


class ToyCurvature(Curvature):
    """A dense symmetric matrix behind the bare protocol: no closed forms."""

    structure = "toy"

    def __init__(self, layout: ParamLayout, matrix: torch.Tensor) -> None:
        super().__init__(layout)
        self.values = matrix

    def _matmat(self, m: torch.Tensor) -> torch.Tensor:
        return self.values @ m

    def _quadratic(self, d: torch.Tensor) -> torch.Tensor:
        return torch.dot(d, self.values @ d)

    def diagonal_flat(self) -> torch.Tensor:
        return self.values.diagonal().clone()

    @property
    def nbytes(self) -> int:
        return 0


def reblocked(kfac: KFACCurvature) -> KFACCurvature:
    """``kfac`` with its last Kronecker block replaced by that block's exact diagonal."""
    *blocks, last = kfac.blocks
    index = torch.cat([kfac.rest_index, last.flat_index()])
    diag = torch.cat([kfac.rest_diag, torch.kron(last.G, last.A).diagonal()])
    return KFACCurvature(kfac.layout, blocks, index, diag, kfac.memory_budget)


def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Linear(3, 4) - Tanh - Linear(4, 3) in float64, six inputs, three classes (P = 31)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 3, (6,))
    return model, x, y


def every_structure(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Curvature]:
    """Name -> curvature: identity, diag, kfac (two block patterns), dense, factors, toy."""
    layout = ParamLayout.of(model)
    kfac = estimators.make("kfac-exact").fit(model, x, y)
    b = torch.randn(layout.numel, layout.numel, dtype=torch.float64)
    return {
        "identity": IdentityCurvature(layout, 0.7),
        "diag": estimators.make("diag-exact").fit(model, x, y),
        "kfac": kfac,
        "kfac-reblocked": reblocked(kfac),
        "dense": estimators.make("full-exact", representation="dense").fit(model, x, y),
        "factor": estimators.make("full-mc", representation="factor", mc_samples=2).fit(
            model, x, y
        ),
        "factor-empirical": estimators.make("full-empirical", representation="factor").fit(
            model, x, y
        ),
        "toy": ToyCurvature(layout, b @ b.T / layout.numel),
    }
