"""Sweeps: sequence x methods x lambda grid x seeds, lambda chosen on validation, resumable.

An experiment (a TOML file, see ``benchmark/experiments/``) expands in two phases, on two
disjoint sets of root seeds (nested selection):

1. selection: every penalised (study, bn, method) group over its lambda grid, on each selection
   seed; a grid whose best lambda (mean validation score over the selection seeds, ``selection``)
   sits at an edge grows by one lattice point past it, round after round, up to ``extend``
   rounds (the cap: a choice still at an edge is flagged in every table);
2. test: each group at its chosen lambda on every test seed (paired: the same seeds, hence the
   same tasks, inits and data orders, for every method). Selection runs are never test runs.

Each run is keyed by the hash of its config; its record is written atomically to
``<results>/runs`` by the driver, and a finished run is skipped, so an interrupted sweep resumes
where it stopped and redoes nothing (runs that failed for a reason outside themselves are tried
again; see ``execution``). Before any run, a preflight checks everything that can be known up
front (``preflight``), and the results folder is locked for the sweep (``lock``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import provenance
from .config import RunConfig, device_kind
from .distributed import DaskPool, executor_choice, failure_workers
from .execution import Pool, Tally, phase_summary, run_configs, sigterm_as_interrupt
from .experiment import (
    EXPERIMENT_KEYS,
    FIXED_BY_EXPERIMENT,
    Experiment,
    Group,
    builtin_experiments,
    group_names,
    load_experiment,
    parse_experiment,
    parse_method,
)
from .lock import FolderLock
from .memwatch import TreeMemory
from .records import RunRecord, clean_partial, read_records, write_json_atomic
from .selection import choose

__all__ = [
    "EXPERIMENT_KEYS",
    "FIXED_BY_EXPERIMENT",
    "Experiment",
    "Group",
    "SweepInterrupted",
    "builtin_experiments",
    "failed_runs",
    "load_experiment",
    "parse_experiment",
    "parse_method",
    "run_sweep",
    "summary_lines",
]

# -- execution ---------------------------------------------------------------------------------


FINAL = "test seeds"
"""The final phase's name (progress bar and tallies)."""


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C or SIGTERM; finished runs are kept and a rerun resumes."""


def run_sweep(
    experiment: Experiment,
    results: Path,
    *,
    jobs: int | str = 1,
    threads: int | None = None,
    group_size: int = 1,
    root: str | None = None,
    download: bool = False,
    retry_failed: bool = False,
    device: str | None = None,
    wait: bool = False,
    out: Path | None = None,
    executor: str = "process",
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Both phases; writes ``<results>/sweep.json`` (experiment, command, machine, outcomes).

    ``jobs`` runs at once (``auto``: one per available core), each with ``threads`` torch
    threads (default: the cores shared evenly; with one job, torch's own default). With
    ``group_size`` > 1, runs that differ only in lambda and seed train together, up to that many
    per process (``benchmark.grouped``); each still gets its own record. ``executor = "dask"``
    sends them to a Dask cluster instead (``scheduler``: ``tcp://HOST:PORT`` or ``local:N``; see
    ``benchmark.distributed``), where workers check their own data and devices.

    Before any run: the preflight (data, device, writable ``results`` and ``out`` folders,
    memory budgets; ``PreflightError``), then the folder's lock (``FolderInUseError``, or wait).
    ``meta["counts"]`` holds each phase's outcomes (``ok``/``diverged``/``failed``, how many ran
    now and how many were reused, the failed runs with their reasons).

    Raises:
        PreflightError: problems found before training; nothing was written (under Dask the
            workers check once the folder is locked: it may exist, empty).
        FolderInUseError: another live sweep holds ``results``.
        SweepInterrupted: Ctrl-C or SIGTERM; workers were stopped, finished records kept.
    """
    choice = executor_choice(executor, scheduler, jobs)
    if device is not None:
        resolved = device_kind(device)  # auto: what this machine has
        for g in experiment.groups:
            g.base = g.base.replace(device=resolved)
    bases = [g.base for g in experiment.groups]
    folders = {"--results": results, "--out": out}
    choice.preflight(bases, root=root, download=download, folders=folders)
    results.mkdir(parents=True, exist_ok=True)
    with FolderLock(results, wait=wait), sigterm_as_interrupt(), TreeMemory() as memory:
        pool = choice.open(threads, group_size, bases, (root, download))
        return _run_phases(experiment, results, pool, root, retry_failed, memory)


def _run_phases(
    experiment: Experiment,
    results: Path,
    pool: Pool | DaskPool,
    root: str | None,
    retry_failed: bool,
    memory: TreeMemory,
) -> dict[str, Any]:
    """Selection (with grid extensions), then the test seeds; then ``sweep.json``.

    ``memory`` samples the driver and its workers (``benchmark.memwatch``); its peak so far is
    the invocation's ``memory`` in ``sweep.json``.
    """
    clean_partial(results)
    provenance.pin_git_sha()
    started, t0 = provenance.now(), time.perf_counter()
    ran: dict[str, Tally] = {}
    kill = True
    try:
        sel, final = _phases(experiment, results, pool, root, retry_failed, ran)
        kill = False
    except KeyboardInterrupt as err:
        kept = sum(1 for _ in (results / "runs").glob("*.json"))
        raise SweepInterrupted(
            f"{kept} finished run records kept in {results / 'runs'} (earlier ones included)"
        ) from err
    finally:
        pool.close(kill=kill)
    meta = _meta(experiment, results, sel, final, ran)
    meta.update(
        started=started, finished=provenance.now(), duration_seconds=time.perf_counter() - t0
    )
    meta["parallel"] = pool.describe()
    memory.sample()
    meta["memory"] = memory.summary()
    meta["invocations"] = [*earlier_invocations(results, experiment.name), invocation(meta)]
    write_json_atomic(results / "sweep.json", meta)
    return meta


INVOCATION_KEYS = ("started", "finished", "duration_seconds", "ran_now", "command", "memory")


def invocation(meta: dict[str, Any]) -> dict[str, Any]:
    """One invocation of a sweep, as ``sweep.json`` keeps it: when, how long, how many runs, how."""
    entry = {k: meta.get(k) for k in INVOCATION_KEYS}
    entry["git_sha"] = (meta.get("provenance") or {}).get("git_sha")
    if entry["ran_now"] is None:  # written before sweeps counted: it ran what it reports
        entry["ran_now"] = meta.get("runs")
    return entry


def earlier_invocations(results: Path, name: str) -> list[dict[str, Any]]:
    """The invocations an existing ``sweep.json`` of the same experiment recorded (else none).

    A resumed or extended sweep keeps them, so the report can state the wall time of every
    invocation that made its records, not only the last one's.
    """
    try:
        old = json.loads((results / "sweep.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict) or old.get("experiment") != name:
        return []
    entries = old.get("invocations")
    return list(entries) if isinstance(entries, list) else [invocation(old)]


def _phases(
    experiment: Experiment,
    results: Path,
    pool: Pool | DaskPool,
    root: str | None,
    retry_failed: bool,
    ran: dict[str, Tally],
) -> tuple[list[RunConfig], list[RunConfig]]:
    """Run both phases; ``ran`` collects each phase's tally. Returns (selection, final) configs."""

    def phase(configs: list[RunConfig], desc: str) -> None:
        ran[desc] = run_configs(
            configs, results, pool, root=root, retry_failed=retry_failed, desc=desc
        )

    def records_of(configs: list[RunConfig]) -> list[RunRecord]:
        ids = {c.run_id for c in configs}
        return [r for r in read_records(results) if r.run_id in ids]

    sel = experiment.selection_configs()
    phase(sel, "lambda selection")
    for round_ in range(experiment.extend):
        more = experiment.extend_grids(records_of(sel))
        if not more:
            break
        sel += more
        phase(more, f"lambda grid extension {round_ + 1}")
    final = experiment.final_configs(choose(records_of(sel), experiment.selection_seeds))
    phase(final, FINAL)
    return sel, final


def _meta(
    experiment: Experiment,
    results: Path,
    sel: list[RunConfig],
    final: list[RunConfig],
    ran: dict[str, Tally],
) -> dict[str, Any]:
    """What ``sweep.json`` says about a sweep (times are added by the caller)."""
    ids = {"selection": sorted({c.run_id for c in sel}), "final": sorted({c.run_id for c in final})}
    wanted = set(ids["selection"]) | set(ids["final"])
    runs = [r for r in read_records(results) if r.run_id in wanted]
    counts = {"selection": phase_summary(sel, results), "final": phase_summary(final, results)}
    for key, tallies in (
        ("selection", [t for d, t in ran.items() if d != FINAL]),
        ("final", [ran[FINAL]]),
    ):
        counts[key]["ran"] = sum(sum(t.ran.values()) for t in tallies)
        counts[key]["reused"] = sum(t.reused for t in tallies)
    return {
        "experiment": experiment.name,
        "description": experiment.description,
        "notes": experiment.notes,
        "seeds": experiment.all_test_seeds(),
        "selection_seeds": experiment.selection_seeds,
        "source": experiment.source,
        "command": provenance.command_line(),
        "provenance": {
            **provenance.machine(experiment.groups[0].base.device),
            "git_sha": provenance.git_sha(),
        },
        "compute_seconds": sum(r.total_seconds for r in runs),
        "runs": len(runs),
        "ran_now": sum(sum(t.ran.values()) for t in ran.values()),
        "run_ids": ids,
        "counts": counts,
        "grids": {
            name: list(g.lambdas)
            for name, g in zip(group_names(experiment.groups), experiment.groups, strict=True)
        },
    }


def failed_runs(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Every failed run of a sweep's ``meta`` (selection and final)."""
    counts = meta.get("counts", {})
    return [
        f for phase in ("selection", "final") for f in counts.get(phase, {}).get("failed_runs", [])
    ]


def summary_lines(meta: dict[str, Any], limit: int = 10) -> list[str]:
    """What a sweep did, per phase, and its failed runs (at most ``limit``) with their reasons."""
    lines = []
    for phase, name in (("selection", "lambda selection"), ("final", "test seeds")):
        c = meta.get("counts", {}).get(phase, {})
        lines.append(
            f"{name}: {c.get('runs', 0)} runs: {c.get('ok', 0)} finished, "
            f"{c.get('diverged', 0)} diverged, {c.get('failed', 0)} failed "
            f"({c.get('ran', 0)} run now, {c.get('reused', 0)} reused from earlier)"
        )
    failed = failed_runs(meta)
    for f in failed[:limit]:
        lines.append(f"  failed [{f['failure']}] {f['run_id']} {f['what']}: {f['message']}")
    if workers := failure_workers(failed):
        lines.append(f"  workers that ran the failed runs: {workers}")
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more (runs.csv lists every run)")
    return lines
