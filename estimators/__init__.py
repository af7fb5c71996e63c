"""ewc-bench curvature estimators: structure x label mode behind one protocol.

>>> import estimators
>>> est = estimators.make("kfac-exact")
>>> curv = est.fit(model, inputs, targets)          # doctest: +SKIP
>>> penalty = 0.5 * lam * curv.quadratic(delta)      # doctest: +SKIP

Names are ``structure-labelmode`` plus ``identity``; see ``names()``. Conventions (F is the mean
of per-input Fisher matrices; parameter layout; eval mode) are in ``curvature`` and ``layout``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .batched import BatchedDiagEstimator
from .curvature import DEFAULT_MEMORY_BUDGET, Curvature
from .diag import DiagAccumulator, DiagCurvature
from .errors import FisherMemoryError
from .estimator import Accumulator, Estimator, GridEstimator
from .full import DenseCurvature, FullAccumulator, LowRankCurvature
from .identity import IdentityCurvature, IdentityEstimator
from .kfac import KFACAccumulator, KFACCurvature
from .labels import Argmax, Empirical, Exact, LabelMode, MonteCarlo
from .layout import ParamLayout
from .options import OPTIONS, resolve

_BASE = ("forward", "chunk_size", "memory_budget")
_MC = ("mc_samples", "generator")

_STRUCTURES: dict[str, tuple[type[Accumulator], tuple[str, ...]]] = {
    "diag": (DiagAccumulator, ("exact", "mc", "empirical", "argmax")),
    "kfac": (KFACAccumulator, ("exact", "mc", "empirical")),
    "full": (FullAccumulator, ("exact", "mc", "empirical")),
}


def _label_mode(mode: str, options: dict[str, Any]) -> LabelMode:
    if mode == "mc":
        return MonteCarlo(options["mc_samples"], options["generator"])
    return {"exact": Exact, "empirical": Empirical, "argmax": Argmax}[mode]()


def _grid_factory(structure: str, mode: str) -> Callable[[str, dict[str, Any]], Estimator]:
    acc = _STRUCTURES[structure][0]
    return lambda name, opts: GridEstimator(name, acc, _label_mode(mode, opts), opts)


_REGISTRY: dict[str, tuple[Callable[[str, dict[str, Any]], Estimator], tuple[str, ...]]] = {
    "identity": (IdentityEstimator, ("forward", "memory_budget")),
    "diag-batched": (BatchedDiagEstimator, ("forward", "batch_size", "memory_budget")),
}
for _s, (_, _modes) in _STRUCTURES.items():
    for _m in _modes:
        _allowed = (
            _BASE + (_MC if _m == "mc" else ()) + (("representation",) if _s == "full" else ())
        )
        _REGISTRY[f"{_s}-{_m}"] = (_grid_factory(_s, _m), _allowed)


def names() -> list[str]:
    """Every registered estimator name, sorted."""
    return sorted(_REGISTRY)


def options(name: str) -> dict[str, str]:
    """The options ``name`` accepts, with their meaning."""
    _check_name(name)
    return {k: OPTIONS[k].doc for k in _REGISTRY[name][1]}


def make(name: str, **opts: Any) -> Estimator:
    """The estimator called ``name``, configured by ``opts``.

    Raises:
        ValueError: unknown name or option (naming the valid ones), or a bad option value.
    """
    _check_name(name)
    factory, allowed = _REGISTRY[name]
    return factory(name, resolve(name, allowed, opts))


def _check_name(name: object) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; valid names: {', '.join(names())}")


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "Curvature",
    "DenseCurvature",
    "DiagCurvature",
    "Estimator",
    "FisherMemoryError",
    "IdentityCurvature",
    "KFACCurvature",
    "LowRankCurvature",
    "ParamLayout",
    "make",
    "names",
    "options",
]
