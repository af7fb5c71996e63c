r"""Scaling's penalty study: the EWC penalty's cost per training step vs past tasks T.

Each label of ``ScalingConfig.penalty_estimators`` (an estimator name or a variant label,
``costs.variants``) is fitted once on the tutorial network and consolidated T times:

- a label without ``online_rule`` runs in **separate** mode (one term per task: linear in T), and
  in **online** mode too where its curvature adds online (``diag-*``: one accumulated curvature,
  flat in T); where it does not (``lowrank-*``, ``full-*`` as a factor) the record says why
  (``online_refused``), unless the list also holds that estimator with an ``online_rule``;
- a label with ``online_rule`` (``kfac-exact online_rule=n-weighted``, ``kfac-exact
  online_rule=sum``, ``ekfac-exact online_rule=sum``; ``kfac_online``, ``online_sum``) runs in
  online mode only (separate mode refuses such a fit): ``n-weighted`` keeps one Kronecker product
  per layer (flat in T), ``sum`` keeps every task's factors (time and memory grow with T). A rule
  that another listed estimator takes but this one does not (``ekfac`` takes ``sum`` only) is
  recorded in ``online_refused`` with the estimator's reason.

Every estimator row carries its ``estimator`` name, its ``name`` (the label) and the variant's
``options`` (``{}`` for a plain name).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from torch import nn

import estimators

from ..device import synchronizer
from .measure import Progress, failure, interleaved_steps
from .variants import parse_variant, variant_label
from .workloads import (
    PENALTY_BATCH,
    PENALTY_WARMUP_STEPS,
    Variant,
    make_variant,
    synthetic,
    synthetic_tutorial_network,
)

if TYPE_CHECKING:
    from .scaling import ScalingConfig

PENALTY_FIT_N = 1000
PENALTY_FULL_ROWS = 200
"""Factor rows of the full Fisher in the penalty study (the harness's default protocol)."""
RULE = "online_rule"


def row_identity(label: str) -> dict[str, Any]:
    """``{"estimator": name, "name": label, "options": options}`` of a row (``parse_variant``)."""
    name, options = parse_variant(label)
    return {"estimator": name, "name": label, "options": options}


def penalty_curvatures(
    config: ScalingConfig, model: nn.Module
) -> tuple[list[dict[str, Any]], dict[str, estimators.Curvature]]:
    """Fit each penalty label once (full Fisher: a factor of ``PENALTY_FULL_ROWS`` rows)."""
    n_fit = min(PENALTY_FIT_N, max(config.n_values))
    x, y = synthetic(n_fit, 10, config.device)
    fitted, notes = {}, []
    for label in config.penalty_estimators:
        row = row_identity(label)
        options: dict[str, Any] = {"memory_budget": config.memory_budget, **row["options"]}
        n = n_fit
        if row["estimator"].startswith("full-"):
            options["representation"] = "factor"
            n = min(n_fit, PENALTY_FULL_ROWS)
        try:
            fitted[label] = estimators.make(row["estimator"], **options).fit(model, x[:n], y[:n])
            notes.append({**row, "status": "ok", "inputs": n})
        except Exception as err:
            notes.append({**row, "inputs": n, **failure(err)})
            notes[-1].pop("traceback", None)
    return notes, fitted


def online_defined(curvature: estimators.Curvature) -> str | None:
    """Why online mode is not defined for ``curvature``, or None when it is."""
    try:
        curvature.add(curvature, 1.0)
    except NotImplementedError as err:
        return str(err)
    return None


def penalty_modes(label: str, curvature: estimators.Curvature) -> list[str]:
    """``online`` for a fit with an ``online_rule``; else separate, and online where it adds."""
    if row_identity(label)["options"].get(RULE) is not None:
        return ["online"]
    return ["separate"] + (["online"] if online_defined(curvature) is None else [])


def online_refusals(
    labels: list[str], curvatures: dict[str, estimators.Curvature]
) -> list[dict[str, Any]]:
    """Labels whose online mode is not measured, and why.

    A plain label whose curvature does not add online, unless an ``online_rule`` label of the
    same estimator is listed (its online mode is that label's column); and each rule listed for
    some estimator that another estimator with rule labels refuses (``ekfac``: ``sum`` only).
    """
    rows = [row_identity(label) for label in labels]
    ruled = {r["estimator"] for r in rows if r["options"].get(RULE) is not None}
    refused = []
    for row in rows:
        curv = curvatures.get(row["name"])
        why = None if curv is None or RULE in row["options"] else online_defined(curv)
        if why is not None and row["estimator"] not in ruled:
            refused.append({**row, "mode": "online", "reason": why.split(":")[0]})
    rules = dict.fromkeys(r["options"][RULE] for r in rows if r["options"].get(RULE) is not None)
    for name in dict.fromkeys(r["estimator"] for r in rows if r["estimator"] in ruled):
        for rule in rules:
            try:
                estimators.make(name, online_rule=rule)
            except ValueError as err:
                options = {RULE: rule}
                label = variant_label(name, options)
                refused.append(
                    {"estimator": name, "name": label, "options": options, "mode": "online"}
                    | {"reason": str(err)}
                )
    return refused


def penalty_variants(
    config: ScalingConfig, base: nn.Module, curvatures: dict[str, estimators.Curvature]
) -> list[Variant]:
    """Plain, then per label, mode and T a variant (``Variant.estimator`` is the label)."""
    variants = [make_variant(base)]
    for label, curv in curvatures.items():
        for mode in penalty_modes(label, curv):
            for t in config.past_tasks:
                variants.append(make_variant(base, curv, label, mode, t))
    return variants


def sweep_penalty(config: ScalingConfig, progress: Progress) -> dict[str, Any]:
    """Extra time per training step of the penalty after T past tasks, separate vs online."""
    base = synthetic_tutorial_network(config.device)
    fits, curvatures = penalty_curvatures(config, base)
    variants = penalty_variants(config, base, curvatures)
    batch = synthetic(PENALTY_BATCH, 10, config.device)
    warmup = min(PENALTY_WARMUP_STEPS, config.penalty_steps)
    sync = synchronizer(config.device)
    interleaved_steps(variants, [batch], config.penalty_steps, warmup, sync, progress.tick)
    plain = statistics.median(variants[0].times)
    rows = []
    for v in variants[1:]:
        median = statistics.median(v.times)
        rows.append(
            {
                **row_identity(str(v.estimator)),
                "mode": v.mode,
                "tasks": v.tasks,
                "median_s": median,
                "extra_s": median - plain,
                "overhead_pct": 100.0 * (median / plain - 1.0),
                "penalty_bytes": v.penalty_bytes,
            }
        )
    return {
        "batch_size": PENALTY_BATCH,
        "steps": config.penalty_steps,
        "plain_s": plain,
        "fits": fits,
        "online_refused": online_refusals(list(config.penalty_estimators), curvatures),
        "rows": rows,
    }
