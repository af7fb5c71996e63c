"""Lambda selection on the validation split (never on test), as a pure function of records.

Runs are grouped by their config without ``lam`` and ``seed``. In each group, among the runs
with the selection seed that finished (status ``ok``), the lambda with the highest validation
average accuracy (mean of the last row of ``acc_val``) is chosen; ties go to the smaller lambda.
The runs of that group at the chosen lambda, for every seed, are the *selected* runs that tables
report. Diverged runs are never chosen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .records import RunRecord


def group_key(config: dict[str, Any]) -> str:
    """Canonical JSON of the config without ``lam``, ``seed`` and ``device``."""
    rest = {k: v for k, v in config.items() if k not in ("lam", "seed", "device")}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"))


def final_average(matrix: list[list[float | None]]) -> float | None:
    """Mean of the last row (accuracy on every task after the last one), None if incomplete."""
    if not matrix or any(v is None for v in matrix[-1]):
        return None
    row = matrix[-1]
    return sum(row) / len(row)  # type: ignore[arg-type]


def choose_lambdas(records: Iterable[RunRecord], selection_seed: int) -> dict[str, float | None]:
    """``group key -> chosen lambda`` (None when no run of the group finished)."""
    best: dict[str, tuple[float, float] | None] = {}
    for r in records:
        key = group_key(r.config)
        best.setdefault(key, None)
        if r.config["seed"] != selection_seed or r.status != "ok":
            continue
        score = final_average(r.acc_val)
        if score is None:
            continue
        lam = float(r.config["lam"])
        current = best[key]
        if current is None or score > current[0] or (score == current[0] and lam < current[1]):
            best[key] = (score, lam)
    return {k: (None if v is None else v[1]) for k, v in best.items()}


def is_selected(record: RunRecord, chosen: dict[str, float | None]) -> bool:
    """Whether ``record`` ran at its group's chosen lambda."""
    lam = chosen.get(group_key(record.config))
    return lam is not None and float(record.config["lam"]) == lam
