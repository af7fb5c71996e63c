"""Online EWC: accumulate curvatures as ``decay * old + new`` where the structure allows it.

Allowed: identity, diag and dense full, in any mixture (the result takes the richer structure).
Refused: KFAC (a sum of Kronecker products is not a Kronecker product) and low-rank factors
(stacking factors is exact but grows with every task, which is what separate mode already does).
"""

from __future__ import annotations

import math

import torch

from .curvature import Curvature
from .diag import DiagCurvature
from .full import DenseCurvature
from .identity import IdentityCurvature


def accumulate(old: Curvature, new: Curvature, decay: float = 1.0) -> Curvature:
    """``decay * old + new`` as a new curvature (inputs are not modified).

    Raises:
        ValueError: different parameter layouts, or a decay that is not a finite number >= 0.
        NotImplementedError: a structure without a closed online sum (KFAC, low-rank factor).
    """
    if (
        isinstance(decay, bool)
        or not isinstance(decay, (int, float))
        or not math.isfinite(decay)
        or decay < 0
    ):
        raise ValueError(f"decay must be a finite number >= 0, got {decay!r}")
    if old.layout.names != new.layout.names or old.layout.shapes != new.layout.shapes:
        raise ValueError("cannot add curvatures over different parameter layouts")
    for c in (old, new):
        if not isinstance(c, (IdentityCurvature, DiagCurvature, DenseCurvature)):
            raise NotImplementedError(
                f"online accumulation is not defined for {c.structure} curvature: "
                + (
                    "a sum of Kronecker products is not a Kronecker product"
                    if c.structure == "kfac"
                    else "stacking low-rank factors grows with every task (that is separate mode)"
                )
                + "; use separate mode (one penalty per task) instead"
            )
    budget = max(old.memory_budget, new.memory_budget)
    if isinstance(old, IdentityCurvature) and isinstance(new, IdentityCurvature):
        return IdentityCurvature(old.layout, decay * old.scale + new.scale, budget)
    if isinstance(old, DenseCurvature) or isinstance(new, DenseCurvature):
        return DenseCurvature(old.layout, decay * _dense(old) + _dense(new), budget)
    return DiagCurvature(old.layout, decay * old.diagonal_flat() + new.diagonal_flat(), budget)


def _dense(c: Curvature) -> torch.Tensor:
    """The dense matrix of a dense curvature, or the diagonal matrix of a diagonal one."""
    return c.matrix if isinstance(c, DenseCurvature) else torch.diag(c.diagonal_flat())
