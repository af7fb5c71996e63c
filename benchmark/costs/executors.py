"""Runs per minute through each executor, Dask's overhead per run, and what limits more workers.

The same runs (``runs`` seeds of one EWC configuration on the synthetic mnist-fmnist stand-in,
about five seconds each at one torch thread) go through ``execution.run_configs`` exactly as a
sweep sends them, records written by the driver, with

* the process pool: ``--jobs 1`` (in the driver) and ``--jobs 2`` (two spawn workers), and
* Dask: ``--executor dask --scheduler local:1`` and ``local:2`` (a ``LocalCluster``),

one torch thread per run everywhere. Every executor is started and warmed first (one run per
worker, so imports and first calls are paid); then batches of ``runs`` runs alternate between
them, in a fresh order each of ``repeats`` rounds (load from other processes falls on all alike),
each timed from its first submission to its last record written: runs per minute = 60 runs /
wall, medians over the rounds. **Overhead per run** = (workers x wall
- the runs' own seconds, ``total_seconds`` by the harness's clock) / runs: worker time spent on
anything but the runs (submission, scheduling, transfer, the driver's writes, idle at the end).

Two per-run costs do not shrink with more workers and bound the useful worker count: the Dask
scheduler's cost per task (no-op tasks, many in flight, on the ``local:1`` cluster) and the
driver's atomic write of one record (JSON + fsync + rename). With the full experiment's run
counts (``full``: from the experiment, run times from a sweep's records when given) the report
derives, on paper, how the full protocol's wall time falls with the number of workers.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean, median
from typing import Any

import torch

from .. import provenance
from ..config import RunConfig
from ..distributed import DaskPool, Scheduler, require_distributed
from ..errors import UserError
from ..execution import Pool, run_configs
from ..records import read_records, write_record
from ..sweep import load_experiment
from .measure import load_average, shuffled

SETTINGS = (("process", 1), ("process", 2), ("dask", 1), ("dask", 2))
"""(executor, workers) of the table's rows; ``process`` with 1 worker runs in the driver."""


@dataclass(frozen=True)
class ExecutorsConfig:
    """What to measure: the executors, the runs, the per-run costs, the experiment on paper."""

    settings: tuple[tuple[str, int], ...] = SETTINGS
    runs: int = 6
    repeats: int = 2
    epochs: int = 150
    estimator: str = "diag-exact"
    noop_tasks: int = 500
    writes: int = 200
    experiment: str = "full"


def run_set(config: ExecutorsConfig, seeds: range) -> list[RunConfig]:
    """The measured runs: one EWC configuration on synthetic data, one run per seed."""
    base = RunConfig(
        data="synthetic",
        method="ewc",
        estimator=config.estimator,
        lam=100.0,
        epochs=config.epochs,
        fisher_samples=200,
        eval_limit=500,
    )
    return [base.replace(seed=s) for s in seeds]


def open_pool(kind: str, workers: int) -> Pool | DaskPool:
    """The pool a sweep would open for ``--executor kind`` with ``workers`` runs at once."""
    if kind == "process":
        return Pool(workers, threads=1)
    require_distributed()
    return DaskPool(Scheduler(workers=workers), 1, 1, gpu=False)


Key = tuple[str, int]


def open_pools(config: ExecutorsConfig) -> tuple[dict[Key, Any], dict[Key, float], str | None]:
    """Every executor of the table, started and warmed (one run per worker), with the seconds.

    A pool starts its processes at its first run, a cluster when it is made: both are counted.
    Executors that cannot start (Dask without its extra) are left out, with the reason.
    """
    pools: dict[Key, Any] = {}
    start: dict[Key, float] = {}
    skipped = None
    for kind, workers in config.settings:
        t0 = time.perf_counter()
        try:
            pools[(kind, workers)] = open_pool(kind, workers)
        except UserError as err:
            skipped = str(err)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            warm = run_set(config, range(1000, 1000 + workers))
            run_configs(warm, Path(tmp), pools[(kind, workers)], desc=f"warm-up {kind} x{workers}")
        start[(kind, workers)] = time.perf_counter() - t0
    return pools, start, skipped


def time_batch(config: ExecutorsConfig, key: Key, pool: Any, repeat: int) -> dict[str, float]:
    """One batch of ``runs`` runs through ``pool``: wall seconds and the runs' own seconds."""
    measured = run_set(config, range(repeat * config.runs, (repeat + 1) * config.runs))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tally = run_configs(measured, Path(tmp), pool, desc=f"{key[0]} x{key[1]} #{repeat + 1}")
        wall = time.perf_counter() - t0
        seconds = [r.total_seconds for r in read_records(Path(tmp))]
    overhead = (key[1] * wall - sum(seconds)) / len(seconds)
    return {"wall": wall, "run": mean(seconds), "overhead": overhead, "ok": tally.ran["ok"]}


def row(key: Key, runs: int, start_s: float, batches: list[dict[str, float]]) -> dict[str, Any]:
    """A table row: medians over the repeats of ``runs`` runs each."""
    wall = median(b["wall"] for b in batches)
    run_s = median(b["run"] for b in batches)
    overhead = median(b["overhead"] for b in batches)
    return {
        "executor": key[0],
        "workers": key[1],
        "runs": runs,
        "ok": min(b["ok"] for b in batches),
        "start_s": start_s,
        "wall_s": wall,
        "walls_s": [b["wall"] for b in batches],
        "runs_per_min": 60.0 * runs / wall,
        "run_s": run_s,
        "overhead_s": overhead,
        "overhead_pct": 100.0 * overhead / run_s,
    }


def _noop(i: int) -> int:
    return i


def dask_costs(pool: DaskPool, config: ExecutorsConfig) -> dict[str, float]:
    """The scheduler's cost per task (no-op tasks, all in flight) and one round trip."""
    client = pool.client
    client.gather(client.map(_noop, range(10), pure=False))  # warm
    t0 = time.perf_counter()
    client.gather(client.map(_noop, range(config.noop_tasks), pure=False))
    per_task = (time.perf_counter() - t0) / config.noop_tasks
    trips = []
    for i in range(20):
        t0 = time.perf_counter()
        client.submit(_noop, i, pure=False).result()
        trips.append(time.perf_counter() - t0)
    return {"task_s": per_task, "round_trip_s": sorted(trips)[len(trips) // 2]}


def write_cost(config: ExecutorsConfig) -> float:
    """Seconds the driver takes to write one record atomically (a real record, ``writes`` times)."""
    from ..harness import run

    record = run(run_set(config, range(1))[0].replace(epochs=1), probe=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for _ in range(config.writes):
            write_record(Path(tmp), record)
        return (time.perf_counter() - t0) / config.writes


def full_experiment(name: str, results: str | None, fallback_run_s: float) -> dict[str, Any]:
    """Run counts of ``name``'s phases, and run times from a sweep's records when given."""
    exp = load_experiment(name)
    selection = len({c.run_id for c in exp.selection_configs()})
    out: dict[str, Any] = {
        "experiment": exp.name,
        "groups": len(exp.groups),
        "seeds": len(exp.seeds),
        "selection_runs": selection,
        "final_runs": sum(len(g.seeds or exp.seeds) for g in exp.groups),  # test seeds, disjoint
        "selection_seeds": len(exp.selection_seeds),
        "extension_rounds": exp.extend,
    }
    seconds = []
    if results and Path(results, "runs").is_dir():
        seconds = [r.total_seconds for r in read_records(Path(results)) if r.status == "ok"]
    if seconds:
        out.update(run_s=mean(seconds), run_s_max=max(seconds), run_s_source=str(results))
    else:
        out.update(run_s=fallback_run_s, run_s_max=None, run_s_source="the measured runs above")
    return out


def measure_executors(
    config: ExecutorsConfig,
    results: str | None = None,
    command: str = "",
    tick: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """The table's rows (``tick`` after each batch), the per-run costs and the full experiment.

    Batches alternate between the executors, in a fresh order every repeat, so load from other
    processes falls on all of them alike; each row gives medians over the repeats.
    """
    load_start, threads = load_average(), torch.get_num_threads()
    pools, start, skipped = open_pools(config)
    try:
        batches: dict[Key, list[dict[str, float]]] = {key: [] for key in pools}
        for repeat in range(config.repeats):
            for key in shuffled(list(pools), repeat):
                batches[key].append(time_batch(config, key, pools[key], repeat))
                tick()
        costs = dask_costs(pools[("dask", 1)], config) if ("dask", 1) in pools else {}
    finally:
        for pool in pools.values():
            pool.close()
        torch.set_num_threads(threads)
    rows = [row(key, config.runs, start[key], batches[key]) for key in pools]
    return {
        "settings": asdict(config),
        "command": command,
        "date": provenance.now(),
        "load_average": [load_start, load_average()],
        "torch_threads_per_run": 1,
        "rows": rows,
        "skipped": skipped,
        "task_s": costs.get("task_s"),
        "round_trip_s": costs.get("round_trip_s"),
        "write_s": write_cost(config),
        "full": full_experiment(config.experiment, results, mean(r["run_s"] for r in rows)),
    }
