"""ewc-bench curvature estimators: structure x label mode behind one protocol.

>>> import estimators
>>> est = estimators.make("kfac-exact")
>>> curv = est.fit(model, inputs, targets)          # doctest: +SKIP
>>> penalty = 0.5 * lam * curv.quadratic(delta)      # doctest: +SKIP

Names are ``structure-labelmode`` plus ``identity``; see ``names()``. Each structure declares its
names, label modes, options and online rule at the end of its own file (``registry``), and its
closed forms (norms, inner products, eigenpairs, online sums) as methods of its curvature class.
Conventions (F is the mean of per-input Fisher matrices; parameter layout; eval mode) are in
``curvature`` and ``layout``.
"""

from __future__ import annotations

from typing import Any

from . import batched, diag, ekfac, full, identity, kfac, lowrank
from .curvature import DEFAULT_MEMORY_BUDGET, Curvature
from .diag import DiagCurvature
from .ekfac import EKFACCurvature
from .errors import FisherMemoryError
from .estimator import Estimator
from .full import DenseCurvature, LowRankCurvature
from .identity import IdentityCurvature
from .kfac import KFACCurvature, KFACDiagCurvature
from .layout import ParamLayout
from .lowrank import LowRankDiagCurvature
from .online_sum import SumCurvature
from .penalty import EWC
from .registry import Declaration, Registry
from .stacking import StackedPenalty

_REGISTRY = Registry(
    identity.DECLARATION,
    batched.DECLARATION,
    diag.DECLARATION,
    kfac.DECLARATION,
    ekfac.DECLARATION,
    full.DECLARATION,
    lowrank.DECLARATION,
)
"""Every estimator, from the declaration at the end of its structure's file (see ``registry``)."""


def names() -> list[str]:
    """Every registered estimator name, sorted."""
    return _REGISTRY.names()


def options(name: str) -> dict[str, str]:
    """The options ``name`` accepts, with their meaning."""
    return _REGISTRY.options(name)


def make(name: str, **opts: Any) -> Estimator:
    """The estimator called ``name``, configured by ``opts``.

    Raises:
        ValueError: unknown name or option (naming the valid ones), or a bad option value.
    """
    return _REGISTRY.make(name, **opts)


def supports_online(name: str, **opts: Any) -> bool:
    """Whether ``name`` with ``opts`` fits curvatures that add online (``decay * old + new``).

    Raises:
        ValueError: as ``make``.
    """
    return online_refusal(name, **opts) is None


def online_refusal(name: str, **opts: Any) -> str | None:
    """Why ``name`` with ``opts`` cannot be accumulated online, or None when it can.

    Raises:
        ValueError: as ``make``.
    """
    return _REGISTRY.online_refusal(name, **opts)


def declare(declaration: Declaration) -> None:
    """Register a structure's estimators (see ``registry.GridStructure`` and ``Single``).

    Raises:
        ValueError: a name is already registered, or an option is unknown.
    """
    _REGISTRY.declare(declaration)


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "EWC",
    "Curvature",
    "DenseCurvature",
    "DiagCurvature",
    "EKFACCurvature",
    "Estimator",
    "FisherMemoryError",
    "IdentityCurvature",
    "KFACCurvature",
    "KFACDiagCurvature",
    "LowRankCurvature",
    "LowRankDiagCurvature",
    "ParamLayout",
    "StackedPenalty",
    "SumCurvature",
    "declare",
    "make",
    "names",
    "online_refusal",
    "options",
    "supports_online",
]
