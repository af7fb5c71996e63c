"""Whether training runs together (``--group-size S``) changes a sweep's outcomes, on one group.

Grouped training (``grouped.run_group``) steps S runs as one stacked model. Each run's gradient
and optimizer update are its own, but the stacked kernels sum in another order than a lone
run's, so records agree with single runs to float32 rounding, which a continual-learning run
can amplify. Whether that moves the *outcomes* is measured here on real data, on one group of
the sweep (one report section, BatchNorm mode and method, its selected test runs):

1. each run again alone (``harness.run``), with the thread count its record states: on the same
   machine this reproduces the sweep's record bitwise (the claim that same config, seed, machine
   and thread count give the same numbers, checked on real runs);
2. the same runs in stacked groups of S (``grouped.run_group``), same thread count.

Both are compared run by run with the sweep's records (``threads.compare_runs``: bitwise
equality, per-seed |Δ| of test average accuracy, the group means with their intervals, and the
paired difference with its CI and p), and both are timed in this one process, one after the
other, so their ratio is the speed-up of grouping at that thread count on real data (lone
seconds depend on the machine's load). Reruns go to ``<results>/grouped-<S>/{alone,grouped}``
(resumable; the sweep's own records are never touched); timings to ``timing.json`` there,
written only when both passes ran in full (a resumed pass has no honest time).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .grouped import GroupError, run_group
from .outcomes import Run, load_meta, load_records, summarise
from .records import RunRecord, read_records, write_json_atomic, write_record
from .threads import compare_runs, group_runs, rerun_each

DEFAULT_SECTION = "mnist-fmnist on mlp hidden=16"
DEFAULT_METHOD = "ewc kfac-exact"
"""The group measured by default: the main comparison's network on its two-task sequence (every
seed's tasks have the same size there, which stacking needs; split-mnist-class's do not)."""
DEFAULT_SIZE = 5
"""Runs per stack by default: with ``JOBS=auto`` two stacks of 5 keep both cores busy."""


def folder(results: Path, size: int) -> Path:
    """Where the reruns of the check with stacks of ``size`` live."""
    return Path(results) / f"grouped-{size}"


def _done(path: Path) -> dict[str, RunRecord]:
    """The finished reruns under ``path`` by run id (none yet: empty)."""
    return {r.run_id: r for r in read_records(path)} if (path / "runs").is_dir() else {}


def _threads_of(runs: Sequence[Run]) -> int:
    """The one torch thread count the group's records state (else this process's)."""
    counts = {r.record.provenance.get("torch_threads") for r in runs} - {None}
    if len(counts) > 1:
        raise ValueError(f"the group's runs used different thread counts {sorted(counts)}")
    return counts.pop() if counts else torch.get_num_threads()


def rerun_grouped(
    runs: Sequence[Run], out: Path, size: int, root: str | None
) -> tuple[list[RunRecord], bool]:
    """The runs in stacks of ``size`` into ``out`` (by seed order); whether all ran now.

    Raises:
        ValueError: the group's runs cannot be stacked (``grouped.GroupError``'s reason).
    """
    done, records = _done(out), []
    for i in range(0, len(runs), size):
        chunk = runs[i : i + size]
        if all(r.record.run_id in done for r in chunk):
            records += [done[r.record.run_id] for r in chunk]
            continue
        try:
            new = run_group([RunConfig.from_dict(r.record.config) for r in chunk], root=root)
        except GroupError as err:
            raise ValueError(f"{chunk[0].sequence} / {chunk[0].label}: {err}") from None
        for record in new:
            write_record(out, record)
        records += new
    return records, not done


def measure(
    results: Path,
    selection_seeds: Sequence[int],
    size: int = DEFAULT_SIZE,
    section: str = DEFAULT_SECTION,
    method: str = DEFAULT_METHOD,
    root: str | None = None,
    bn: str | None = None,
) -> dict[str, Any]:
    """Rerun one group alone and in stacks of ``size``; compare both with the sweep; time both."""
    if size < 2:
        raise ValueError(f"a stack needs at least 2 runs, got --group-size {size}")
    runs = summarise(load_records(Path(results), load_meta(Path(results))), selection_seeds)
    group = [r for r in group_runs(runs, section, method, bn) if r.ok]
    if len({r.bn for r in group}) > 1:
        raise ValueError(f"{section} / {method} ran in more than one BatchNorm mode: choose --bn")
    base, before = folder(results, size), torch.get_num_threads()
    try:
        torch.set_num_threads(_threads_of(group))
        t0 = time.perf_counter()
        alone, fresh_alone = rerun_each(group, base / "alone", root)
        t1 = time.perf_counter()
        grouped, fresh_grouped = rerun_grouped(group, base / "grouped", size, root)
        t2 = time.perf_counter()
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    if fresh_alone and fresh_grouped:
        timing = {"alone_seconds": t1 - t0, "grouped_seconds": t2 - t1, "threads": threads}
        write_json_atomic(base / "timing.json", {**timing, "runs": len(group)})
    return check_of(group, alone, grouped, size, _timing(base))


def _timing(base: Path) -> dict[str, Any] | None:
    """The stored timing of a check's passes, if both ran in full once."""
    path = base / "timing.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_of(
    group: Sequence[Run],
    alone: Sequence[RunRecord],
    grouped: Sequence[RunRecord],
    size: int,
    timing: dict[str, Any] | None,
) -> dict[str, Any]:
    """The check's result: both comparisons with the sweep, the stack size, the timing."""
    return {
        "size": size,
        "alone": compare_runs(group, alone),
        "grouped": compare_runs(group, grouped),
        "timing": timing,
    }


def load_checks(results: Path, runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The checks the reruns under ``results/grouped-*/`` support (none: empty)."""
    checks = []
    for base in sorted(Path(results).glob("grouped-*")):
        size = base.name.removeprefix("grouped-")
        if not size.isdigit() or not (base / "grouped" / "runs").is_dir():
            continue
        grouped = list(read_records(base / "grouped"))
        alone = list(_done(base / "alone").values())
        ids = {r.run_id for r in grouped}
        group = sorted((r for r in runs if r.selected and r.record.run_id in ids), key=_seed)
        if group:
            checks.append(check_of(group, alone, grouped, int(size), _timing(base)))
    return checks


def _seed(run: Run) -> int:
    """Sort key: the run's seed."""
    return run.seed
