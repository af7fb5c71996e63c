"""Synthetic run records with known effects, shared by the report tests.

Each record's 2-task accuracy matrix is ``[[0.98, 0.1], [x - 0.02, x + 0.02]]``: test average
accuracy ``x``, forgetting ``1.00 - x``. ``x`` = 0.8 + a per-seed draw shared by every method on
that seed (so pairing removes it) + the method's effect + a small draw of the run's own.
"""

from __future__ import annotations

import random

from benchmark.config import RunConfig
from benchmark.records import RunRecord


def record(name: str, seed: int, x: float, seconds: float = 0.0, **settings) -> RunRecord:
    """One finished EWC run with estimator ``name`` whose test average accuracy is ``x``."""
    cfg = RunConfig(data="synthetic", method="ewc", estimator=name, lam=1.0, seed=seed, **settings)
    matrix = [[0.98, 0.1], [x - 0.02, x + 0.02]]
    return RunRecord(
        run_id=cfg.run_id,
        config=cfg.to_dict(),
        acc_val=matrix,
        acc_test=matrix,
        total_seconds=seconds,
        representations=["full-factor 20 rows" if name == "full-exact" else "diag"],
    )


def effect_records(
    effects: dict[str, float], seeds=range(10), selection_seed: int = 99, **settings
) -> list[RunRecord]:
    """Every estimator of ``effects`` on the selection seed and ``seeds``; the full Fisher's
    runs take 100 s, the others 10 s."""
    out = []
    for name, effect in effects.items():
        for seed in [selection_seed, *seeds]:
            noise = random.Random(f"{name}/{seed}").gauss(0.0, 0.005)  # the run's own
            x = 0.8 + random.Random(seed).gauss(0.0, 0.03) + effect + noise  # seed: shared
            seconds = 100.0 if name == "full-exact" else 10.0
            out.append(record(name, seed, x, seconds, **settings))
    return out
