"""The methods of the benchmark, one spec each (a registry, like DomainBed's ``ALGORITHMS``).

========  ================================================================================
baseline  plain fine-tuning, no penalty
l2        EWC with F = I: L2 to the old weights (``ewc.fit_curvature`` with ``identity``)
ewc       EWC with any curvature estimator, separate or online (``methods.ewc``)
mas       Memory Aware Synapses, separate or online (``methods.mas``)
joint     all tasks at once: the upper bound
========  ================================================================================

``METHODS[name]`` is the spec; ``parse_label`` turns a label (``ewc-online kfac-mc``, ``mas``)
into run settings, ``label_of`` a run's settings into its label, ``sort_key`` orders labels in
reports. See ``methods.base`` for what a spec and a regulariser are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import estimators

from .base import Method, Regulariser
from .ewc import CurvatureRegulariser, fit_curvature
from .mas import mas_regulariser


def _curvature_regulariser(config: Any) -> Regulariser:
    return CurvatureRegulariser(config, fit_curvature)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("baseline", "plain fine-tuning, no penalty", order=0),
        Method(
            "l2",
            "EWC with F = I: L2 to the old weights",
            penalised=True,
            regulariser=_curvature_regulariser,
            order=1,
        ),
        Method(
            "ewc",
            "Elastic Weight Consolidation with any curvature estimator",
            penalised=True,
            takes_estimator=True,
            modes=("separate", "online"),
            regulariser=_curvature_regulariser,
            order=2,
        ),
        Method(
            "mas",
            "Memory Aware Synapses (Aljundi et al. 2018): output-sensitivity importances",
            penalised=True,
            modes=("separate", "online"),
            regulariser=mas_regulariser,
            order=4,
        ),
        Method("joint", "all tasks at once: the upper bound", joint=True, order=9),
    )
}
MODES = ("separate", "online")


def method_names() -> tuple[str, ...]:
    """Every method name, in report order."""
    return tuple(sorted(METHODS, key=lambda n: METHODS[n].order))


def label_of(config: Mapping[str, Any]) -> str:
    """A run's method label from its settings (a ``RunConfig`` dict), without validating."""
    method = METHODS.get(str(config.get("method")))
    return method.label(config) if method else str(config.get("method"))


def parse_label(label: str) -> dict[str, Any]:
    """``'ewc kfac-mc'`` -> ``{method: ewc, estimator: kfac-mc, mode: separate}``; ``mas-online``.

    Raises:
        ValueError: an unknown method or a malformed label, listing the forms allowed.
    """
    head, *rest = label.split()
    name, online = (head[: -len("-online")], True) if head.endswith("-online") else (head, False)
    method = METHODS.get(name)
    mode = "online" if online else "separate"
    if method is None or mode not in method.modes or len(rest) != int(method.takes_estimator):
        raise ValueError(f"unknown method {label!r}; use {', '.join(label_forms())}")
    return {"method": name, "estimator": rest[0] if rest else None, "mode": mode}


def label_forms() -> list[str]:
    """The labels every method accepts: ``baseline``, ``'ewc <estimator>'``, ``mas-online``..."""
    forms = []
    for name in method_names():
        m = METHODS[name]
        for mode in m.modes:
            text = name + ("-online" if mode == "online" else "")
            forms.append(f"'{text} <estimator>'" if m.takes_estimator else text)
    return forms


def sort_key(label: str) -> tuple[int, int, int, str]:
    """Report order: by method, separate before online, estimators in ``estimators.names()``."""
    base, _, suffix = label.partition(" (")
    try:
        fields = parse_label(base)
    except ValueError:
        return 99, 0, 0, label
    names = estimators.names()
    est = fields["estimator"]
    rank = names.index(est) if est in names else len(names)
    return METHODS[fields["method"]].order, fields["mode"] == "online", rank, (est or "") + suffix


__all__ = [
    "METHODS",
    "MODES",
    "Method",
    "Regulariser",
    "label_forms",
    "label_of",
    "method_names",
    "parse_label",
    "sort_key",
]
