"""Estimator options: defaults and validation, each failure saying what is allowed."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .curvature import DEFAULT_MEMORY_BUDGET


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"option {name!r} must be a positive integer, got {value!r}")
    return value


def _budget(name: str, value: Any) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 1:
        raise ValueError(f"option {name!r} must be a positive number of bytes, got {value!r}")
    return int(value)


def _forward(name: str, value: Any) -> Callable | None:
    if value is not None and not callable(value):
        raise ValueError(
            f"option {name!r} must be None or a callable (model, inputs) -> logits, got {value!r}"
        )
    return value


def _generator(name: str, value: Any) -> torch.Generator | None:
    if value is not None and not isinstance(value, torch.Generator):
        raise ValueError(f"option {name!r} must be None or a torch.Generator, got {value!r}")
    return value


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"option {name!r} must be a non-negative integer, got {value!r}")
    return value


REPRESENTATIONS = ("auto", "dense", "factor")


def _representation(name: str, value: Any) -> str:
    if value not in REPRESENTATIONS:
        raise ValueError(
            f"option {name!r} must be one of {', '.join(REPRESENTATIONS)}; got {value!r}"
        )
    return value


KFAC_FACTORS = ("full", "a-diag", "g-diag", "diag", "a-only")
"""``factors`` of ``kfac-*``: G (x) A, G (x) diag A, diag G (x) A, diag G (x) diag A, I (x) A."""

LAYER_GROUPS = ("all", "hidden", "output")
"""Words ``layers`` takes besides module names: every Kronecker layer, all but the last run, the
last run (see ``kfac``)."""


OUTPUT_CURVATURES = ("per-input", "mean")
"""``output_curvature`` of ``full-exact``: each input's own softmax curvature, or their mean."""


def _output_curvature(name: str, value: Any) -> str:
    if value not in OUTPUT_CURVATURES:
        raise ValueError(
            f"option {name!r} must be one of {', '.join(OUTPUT_CURVATURES)}; got {value!r}"
        )
    return value


ONLINE_RULES = ("sum", "n-weighted", "balanced", "nearest")
"""``online_rule`` of ``kfac-*`` (all four) and ``ekfac-*`` (``sum``): how online EWC combines
the tasks' Kronecker factors (see ``kfac_online``); None (the default): no online mode."""


def _online_rule(name: str, value: Any) -> str | None:
    if value is not None and value not in ONLINE_RULES:
        raise ValueError(
            f"option {name!r} must be one of {', '.join(ONLINE_RULES)} (or None: no online "
            f"mode); got {value!r}"
        )
    return value


def _factors(name: str, value: Any) -> str:
    if value not in KFAC_FACTORS:
        raise ValueError(f"option {name!r} must be one of {', '.join(KFAC_FACTORS)}; got {value!r}")
    return value


def _layers(name: str, value: Any) -> tuple[str, ...]:
    """A layer name or a list of them (module names or ``LAYER_GROUPS``), as a tuple."""
    names = (value,) if isinstance(value, str) else value
    ok = isinstance(names, (list, tuple)) and len(names) > 0
    if not ok or not all(isinstance(n, str) and n for n in names) or len(set(names)) < len(names):
        raise ValueError(
            f"option {name!r} must be a layer name or a non-empty list of distinct ones (module "
            f"names as in model.named_modules(), or {', '.join(map(repr, LAYER_GROUPS))}); "
            f"got {value!r}"
        )
    return tuple(names)


@dataclass(frozen=True)
class Option:
    """An option's default, validator and one-line meaning."""

    default: Any
    check: Callable[[str, Any], Any]
    doc: str


OPTIONS: dict[str, Option] = {
    "forward": Option(None, _forward, "callable (model, inputs) -> logits; default model(inputs)"),
    "chunk_size": Option(512, _positive_int, "inputs per batched pass"),
    "memory_budget": Option(
        DEFAULT_MEMORY_BUDGET, _budget, "bytes a dense matrix or low-rank factor may take"
    ),
    "mc_samples": Option(1, _positive_int, "labels sampled per input (mc)"),
    "generator": Option(None, _generator, "torch.Generator for the mc samples (reproducible)"),
    "representation": Option("auto", _representation, "full: 'auto', 'dense' or 'factor'"),
    "batch_size": Option(100, _positive_int, "mini-batch size of the legacy batched estimator"),
    "rank": Option(50, _positive_int, "lowrank: k, the top eigenpairs kept (1 <= k < P)"),
    "oversample": Option(10, _non_negative_int, "lowrank: sketch columns beyond rank"),
    "power_iterations": Option(
        3, _non_negative_int, "lowrank: extra passes over the inputs that sharpen the sketch"
    ),
    "output_curvature": Option(
        "per-input",
        _output_curvature,
        "full: softmax curvature of each input ('per-input': the Fisher) or their 'mean' (exact)",
    ),
    "factors": Option(
        "full",
        _factors,
        "kfac: 'full' (G (x) A), 'a-diag', 'g-diag', 'diag' (both diagonal) or 'a-only' (G = I)",
    ),
    "layers": Option(
        ("all",),
        _layers,
        "kfac: layers with Kronecker blocks (module names, 'all', 'hidden', 'output'); "
        "exact diagonal elsewhere",
    ),
    "online_rule": Option(
        None,
        _online_rule,
        "kfac/ekfac online EWC: how tasks' factors combine: 'sum', 'n-weighted', 'balanced', "
        "'nearest' (ekfac: 'sum'); None: separate mode only",
    ),
}


def resolve(name: str, allowed: tuple[str, ...], given: dict[str, Any]) -> dict[str, Any]:
    """Validate ``given`` against the ``allowed`` option names and fill in defaults.

    Raises:
        ValueError: for an unknown option (naming the valid ones) or a bad value.
    """
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for estimator {name!r}; "
            f"valid options: {', '.join(sorted(allowed))}"
        )
    return {k: OPTIONS[k].check(k, given.get(k, OPTIONS[k].default)) for k in allowed}
