"""Nested lambda selection: chosen on the validation split of *selection* seeds, never on test.

A sweep has two disjoint sets of root seeds (``sweep``): the selection seeds, whose runs only
choose lambda, and the test seeds, whose runs only report. Runs are grouped by their config
without ``lam`` and ``seed`` (``group_key``). In each group, a lambda is *scored* when its run
finished (status ``ok``) on every selection seed; its score is the mean over those seeds of the
validation average accuracy (mean of the last row of ``acc_val``):

    score(lambda) = (1 / |S|) * sum_{s in S} mean_j acc_val[s, lambda][T-1, j]

The chosen lambda has the highest score; ties go to the smaller lambda. A lambda that diverged
on any selection seed is never chosen. A group with a selection run that *failed* (a cause
outside the run, or a bug: its outcome is unknown, unlike a divergence) chooses nothing until
a rerun completes it, so that a resumed sweep never decides differently from a finished one.
Methods without a penalty have the one lambda 0 and need no selection runs. The runs of a
group at the chosen lambda on the *test* seeds are the *selected* runs that tables report;
selection runs never are (``role``).

The learning rate is chosen the same way where an experiment gives a study several (``lrs``,
recorded in each run's ``lr_grid``): the groups that differ only in ``lr`` within one grid form a
*family* (``family_key``); each group first chooses its lambda as above, then the family keeps
the group whose chosen lambda scores highest (ties to the smaller lr), and the other groups
choose nothing (``choose``). Unpenalised groups of such a family run on the selection seeds at
lambda 0 to be scored. Runs without an ``lr_grid`` form families of one group, which decide
exactly as ``choose_lambdas`` does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable
from typing import Any

from .config import PENALISED
from .records import RunRecord

SELECTION = "selection"
TEST = "test"
DEFAULT_SELECTION_SEEDS = (1000, 1001, 1002)
"""Selection seeds of an experiment that names none: three, far from the usual test seeds."""


def group_key(config: dict[str, Any]) -> str:
    """Canonical JSON of the config without ``lam``, ``seed`` and ``device``."""
    rest = {k: v for k, v in config.items() if k not in ("lam", "seed", "device")}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"))


def family_key(config: dict[str, Any]) -> str:
    """The key of the groups whose (lr, lambda) compete in one selection.

    ``group_key`` without ``lr`` where the run has an ``lr_grid`` (a study's ``lrs``), else the
    group's own key. Only runs that name the same grid compete: two studies that merely set
    different lrs are separate groups, each tested at its own lr.
    """
    if not config.get("lr_grid"):
        return group_key(config)
    rest = {k: v for k, v in config.items() if k not in ("lam", "seed", "device", "lr")}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"))


def selection_seeds_of(meta: dict[str, Any]) -> tuple[int, ...]:
    """The selection seeds a sweep's ``sweep.json`` names.

    Sweeps made before nested selection named one ``selection_seed`` (then also a test seed);
    a folder without metadata gets ``DEFAULT_SELECTION_SEEDS``.
    """
    seeds = meta.get("selection_seeds")
    if isinstance(seeds, list) and seeds:
        return tuple(int(s) for s in seeds)
    if isinstance(meta.get("selection_seed"), int):
        return (int(meta["selection_seed"]),)
    return DEFAULT_SELECTION_SEEDS


def role(seed: int, selection_seeds: Collection[int]) -> str:
    """``"selection"`` for a selection seed's run, else ``"test"``."""
    return SELECTION if seed in selection_seeds else TEST


def final_average(matrix: list[list[float | None]]) -> float | None:
    """Mean of the last row (accuracy on every task after the last one), None if incomplete."""
    if not matrix or any(v is None for v in matrix[-1]):
        return None
    row = matrix[-1]
    return sum(row) / len(row)  # type: ignore[arg-type]


def validation_scores(
    records: Iterable[RunRecord], selection_seeds: Collection[int]
) -> dict[str, dict[float, dict[int, float | None]]]:
    """``group -> lambda -> selection seed -> validation average`` (None: not finished)."""
    out: dict[str, dict[float, dict[int, float | None]]] = {}
    for r in records:
        key = group_key(r.config)
        lams = out.setdefault(key, {})
        if r.config["seed"] not in selection_seeds:
            continue
        score = final_average(r.acc_val) if r.status == "ok" else None
        lams.setdefault(float(r.config["lam"]), {})[int(r.config["seed"])] = score
    return out


def lambda_score(
    per_seed: dict[int, float | None], selection_seeds: Collection[int]
) -> float | None:
    """Mean validation average over the selection seeds; None unless every one finished."""
    values = [per_seed.get(s) for s in selection_seeds]
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)  # type: ignore[arg-type]


def choose_lambdas(
    records: Iterable[RunRecord], selection_seeds: Collection[int]
) -> dict[str, float | None]:
    """``group key -> chosen lambda`` (None when no lambda of the group is scored).

    Groups of a method without a penalty get 0.0, their only lambda, without selection runs.
    """
    records = list(records)
    seeds = sorted(set(selection_seeds))
    scores = validation_scores(records, seeds)
    incomplete = incomplete_groups(records, seeds)
    unpenalised = {group_key(r.config) for r in records if r.config["method"] not in PENALISED}
    chosen: dict[str, float | None] = {}
    for key, lams in scores.items():
        if key in unpenalised:
            chosen[key] = 0.0
            continue
        if key in incomplete:
            chosen[key] = None
            continue
        scored = [
            (s, lam) for lam, per in lams.items() if (s := lambda_score(per, seeds)) is not None
        ]
        chosen[key] = max(scored, key=lambda t: (t[0], -t[1]))[1] if scored else None
    return chosen


def incomplete_groups(records: Iterable[RunRecord], selection_seeds: Collection[int]) -> set[str]:
    """Group keys with a *failed* selection run: they choose nothing until a rerun completes."""
    return {
        group_key(r.config)
        for r in records
        if r.status == "failed" and r.config["seed"] in selection_seeds
    }


def choose(
    records: Iterable[RunRecord], selection_seeds: Collection[int]
) -> dict[str, float | None]:
    """``group key -> chosen lambda``, with the learning rate chosen per family (module doc).

    As ``choose_lambdas``, except that in a family of groups that differ only in ``lr`` every
    group but the best one gets None: its lambda is not tested. A family with an incomplete
    group (a failed selection run) chooses nothing until a rerun completes it.
    """
    records = list(records)
    seeds = sorted(set(selection_seeds))
    chosen = choose_lambdas(records, seeds)
    scores = validation_scores(records, seeds)
    incomplete = incomplete_groups(records, seeds)
    families: dict[str, dict[str, float]] = {}
    for r in records:
        lr = float(r.config.get("lr", 0.0))
        families.setdefault(family_key(r.config), {})[group_key(r.config)] = lr
    out = dict(chosen)
    for members in families.values():
        if len(members) < 2:
            continue
        best = None
        if not incomplete & set(members):
            scored = [
                (score, -lr, key)
                for key, lr in members.items()
                if (lam := chosen.get(key)) is not None
                and (score := lambda_score(scores.get(key, {}).get(lam, {}), seeds)) is not None
            ]
            best = max(scored)[2] if scored else None
        out.update({key: None for key in members if key != best})
    return out


def lr_edges(records: Iterable[RunRecord]) -> dict[str, tuple[float, ...]]:
    """``family key -> (smallest, largest)`` of the ``lr_grid`` its runs chose lr from.

    A family that chose its lr at one of them is not bracketed: a better lr may lie beyond.
    """
    out: dict[str, tuple[float, ...]] = {}
    for r in records:
        grid = r.config.get("lr_grid") or []
        if grid:
            out[family_key(r.config)] = (float(min(grid)), float(max(grid)))
    return out


def is_selected(
    record: RunRecord, chosen: dict[str, float | None], selection_seeds: Collection[int]
) -> bool:
    """Whether ``record`` is a test run at its group's chosen lambda."""
    lam = chosen.get(group_key(record.config))
    if lam is None or record.config["seed"] in selection_seeds:
        return False
    return float(record.config["lam"]) == lam


def lattice(value: float, steps: int, per_decade: int) -> float:
    """``value`` moved ``steps`` points along the grid of ``per_decade`` values per decade.

    A value on the lattice 10^(i / per_decade) moves to 10^((i + steps) / per_decade), rounded
    to 4 significant digits (10^2.5 -> 316.2), so that a grid grown twice in one direction and a
    grid declared with those values name the same runs; a value off the lattice is multiplied by
    10^(steps / per_decade) and rounded the same way.
    """
    if value <= 0:
        raise ValueError(f"a lambda grid grows from positive values only, got {value!r}")
    exponent = math.log10(value) * per_decade
    nearest = round(exponent)
    if abs(exponent - nearest) < 1e-3 or _is_rounded_lattice(value, nearest, per_decade):
        exponent = nearest
    return float(f"{10 ** ((exponent + steps) / per_decade):.4g}")


def _is_rounded_lattice(value: float, index: int, per_decade: int) -> bool:
    """Whether ``value`` is the 4-digit rounding of the lattice point ``index``."""
    return value == float(f"{10 ** (index / per_decade):.4g}")
