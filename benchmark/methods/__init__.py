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

from .base import LABEL_OPTIONS, Method, Regulariser, label_value
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


def parse_label(label: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``'ewc kfac-mc'`` -> ``{method: ewc, estimator: kfac-mc, mode: separate}``; ``mas-online``.

    After the estimator, ``key=value`` tokens set the ``LABEL_OPTIONS``: ``rank`` (an integer),
    ``factors``, ``output_curvature`` and ``online_rule`` (words), ``layers`` (names separated
    by commas, a list): ``'ewc lowrank-exact rank=50'`` adds ``estimator_options = {rank: 50}``,
    ``'ewc kfac-exact factors=a-diag layers=hidden'`` adds ``{factors: 'a-diag', layers:
    ['hidden']}``, on top of ``options`` (the estimator options set elsewhere, e.g. a study's
    memory budget). The estimator validates the values (``estimators.make``).

    Raises:
        ValueError: an unknown method or a malformed label, listing the forms allowed.
    """
    head, *rest = label.split()
    name, online = (head[: -len("-online")], True) if head.endswith("-online") else (head, False)
    method = METHODS.get(name)
    mode = "online" if online else "separate"
    rest, label_options = _label_options(label, rest)
    takes = method is not None and method.takes_estimator
    wrong = method is None or mode not in method.modes or len(rest) != int(takes)
    if wrong or (label_options and not takes):  # options belong to an estimator
        raise ValueError(f"unknown method {label!r}; use {', '.join(label_forms())}")
    fields: dict[str, Any] = {"method": name, "estimator": rest[0] if rest else None, "mode": mode}
    if label_options:
        fields["estimator_options"] = {**(options or {}), **label_options}
    return fields


LABEL_VALUES = {
    "rank": (lambda v: int(v) if v.isdigit() else None, "an integer"),
    "factors": (lambda v: v or None, "a word"),
    "layers": (lambda v: v.split(",") if v and "" not in v.split(",") else None, "names a,b"),
    "output_curvature": (lambda v: v or None, "a word"),
    "online_rule": (lambda v: v or None, "a word"),
}
"""``LABEL_OPTIONS`` -> (parse the text after ``=``, None when malformed; what it takes)."""


def _label_options(label: str, tokens: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split ``key=value`` tokens (``LABEL_OPTIONS``, see ``LABEL_VALUES``) from the others."""
    words, options = [], {}
    for token in tokens:
        if "=" not in token:
            words.append(token)
            continue
        key, _, text = token.partition("=")
        value = LABEL_VALUES[key][0](text) if key in LABEL_OPTIONS else None
        if value is None:
            takes = ", ".join(f"{k} ({LABEL_VALUES[k][1]})" for k in LABEL_OPTIONS)
            raise ValueError(
                f"bad option {token!r} in method {label!r}: a label may set {takes} (e.g. "
                "'ewc lowrank-exact rank=50', 'ewc kfac-exact factors=a-diag layers=hidden')"
            )
        options[key] = value
    return words, options


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
    options = "".join(
        f" {k}={v:09d}" if isinstance(v, int) else f" {k}={label_value(v)}"
        for k, v in fields.get("estimator_options", {}).items()
    )
    return (
        METHODS[fields["method"]].order,
        fields["mode"] == "online",
        rank,
        (est or "") + options + suffix,
    )


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
