"""Runs per minute, one by one against trained together as one stacked model (``grouped``).

For each network and group size S, the same S runs (seeds 0..S-1 of one EWC configuration on the
synthetic mnist-fmnist stand-in) are trained

* one by one through ``harness.run`` (the sweep's ``--group-size 1`` path), and
* as groups of S through ``grouped.run_group`` (the sweep's ``--group-size S`` path),

and each gives whole runs per minute, 60 S / seconds: training, curvature fits, penalties and
evaluations included, so the ratio is what a sweep gains, not a training-step micro benchmark.
Both sides are timed in the same process, alternating within each repeat, so the ratio is
robust to a shared machine; the lone numbers are not (the report says so). The content of the
inputs does not change the cost of a step, hence synthetic data: the measurement needs no
dataset and runs in CI's smoke test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

from ..config import RunConfig
from ..grouped import run_group
from ..harness import run

NETWORKS: dict[str, dict[str, Any]] = {
    "tutorial-mlp": {"model": "tutorial-mlp"},
    "mlp hidden=16": {"model": "mlp", "model_options": {"hidden": 16}},
}
"""The networks of the table: the tutorial's 784-100-100-10 with BatchNorm, and the main
comparison's MLP 784-16-16-10 without it (``model = mlp``, ``hidden = 16``; not the ``mlp-16``
model spec, which is 784-16-10)."""

SIZES = (1, 5, 10, 20)
"""Group sizes of the table; size 1 is the one-by-one path itself."""


@dataclass(frozen=True)
class ThroughputConfig:
    """What to measure: networks, group sizes, and the run every member repeats.

    ``epochs`` and ``fisher_samples`` set the run: two tasks (synthetic MNIST then FashionMNIST,
    1,080 training inputs each after the validation split), EWC with ``estimator``.
    """

    networks: tuple[str, ...] = tuple(NETWORKS)
    sizes: tuple[int, ...] = SIZES
    estimator: str = "kfac-exact"
    epochs: int = 20
    fisher_samples: int = 200
    repeats: int = 2


def member_configs(config: ThroughputConfig, network: str, size: int) -> list[RunConfig]:
    """The ``size`` runs of one group: seeds 0..size-1, one lambda, everything else shared."""
    base = RunConfig(
        data="synthetic",
        method="ewc",
        estimator=config.estimator,
        lam=100.0,
        epochs=config.epochs,
        fisher_samples=config.fisher_samples,
        eval_limit=500,
        **NETWORKS[network],
    )
    return [base.replace(seed=s) for s in range(size)]


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _alone(configs: Sequence[RunConfig]) -> None:
    for c in configs:
        run(c, probe=False)


def measure_size(config: ThroughputConfig, network: str, size: int) -> dict[str, Any]:
    """One row: runs per minute alone and grouped (medians over ``repeats``), and their ratio."""
    configs = member_configs(config, network, size)
    alone, together = [], []
    for _ in range(config.repeats):
        alone.append(_seconds(lambda: _alone(configs)))
        together.append(_seconds(lambda: run_group(configs)))
    per_min_alone = 60.0 * size / median(alone)
    per_min_group = 60.0 * size / median(together)
    return {
        "network": network,
        "group_size": size,
        "runs_per_min_alone": per_min_alone,
        "runs_per_min_grouped": per_min_group,
        "speedup": per_min_group / per_min_alone,
    }


def measure_throughput(
    config: ThroughputConfig, tick: Callable[[], None] = lambda: None
) -> list[dict[str, Any]]:
    """The table's rows, network by network, size by size (``tick`` after each row)."""
    rows = []
    for network in config.networks:
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}; known: {', '.join(NETWORKS)}")
        for size in config.sizes:
            rows.append(measure_size(config, network, size))
            tick()
    return rows
