"""Seconds of whole runs split into training, penalty, estimation and evaluation.

Part of ``scaling.md``: where a sweep's time goes, per (sequence, method), over its selected runs.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..outcomes import load_meta, load_records, penalty_seconds, summarise
from ..records import RunRecord
from ..selection import selection_seeds_of


def run_time_split(record: RunRecord) -> dict[str, float]:
    """Seconds of one run split into training (without penalty), penalty, estimation, evaluation.

    The penalty's part of each task's training time is ``outcomes.penalty_seconds``.
    """
    penalty = sum(penalty_seconds(record))
    return {
        "training": float(sum(record.train_seconds)) - penalty,
        "penalty": penalty,
        "estimation": float(sum(record.estimate_seconds)),
        "evaluation": float(sum(record.eval_seconds)),
    }


def time_split(results: str | None) -> dict[str, Any] | None:
    """Mean time split per (sequence, method) over the selected runs of a sweep, or None."""
    if results is None:
        return None
    path = Path(results)
    if not path.is_dir():
        return {"source": str(path), "rows": [], "reason": f"{path} is not a folder"}
    meta = load_meta(path)
    chosen = summarise(load_records(path, meta), selection_seeds_of(meta))
    runs = [r for r in chosen if r.selected and r.record.status == "ok"]
    groups: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for run in runs:
        groups.setdefault((run.sequence, run.bn, run.label), []).append(run_time_split(run.record))
    rows = []
    for (sequence, bn, label), splits in sorted(groups.items()):
        mean = {k: statistics.fmean(s[k] for s in splits) for k in splits[0]}
        rows.append({"sequence": sequence, "bn": bn, "method": label, "runs": len(splits), **mean})
    return {"source": str(path), "rows": rows, "reason": None if rows else "no finished runs"}
