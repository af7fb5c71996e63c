"""How far the number of torch threads moves a run's numbers, measured on one group.

Bitwise equality of results holds for one machine and one thread count only: with another
thread count, torch splits its reductions differently, floating-point sums come out in other
last bits, and a continual-learning run can amplify such differences (a different early step
reaches a different minimum). This module measures the size of that effect instead of
assuming it: the selected test runs of one group (one report section, BatchNorm mode and
method) are rerun with another thread count into ``<results>/threads-<k>/runs`` (resumable; the
sweep's own records are never touched), then compared run by run with the originals:

- how many runs give bitwise the same accuracy matrices;
- the per-seed change of test average accuracy, |Δ| median and largest;
- the group's mean before and after, and both means' 95% intervals.

The report states the result next to its reproducibility claim (``report.provenance``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import harness, metrics
from .config import RunConfig
from .outcomes import Run, load_meta, load_records, network_facts, summarise
from .records import RunRecord, read_records, write_record

DEFAULT_SECTION = "split-mnist-class on mlp hidden=16"
DEFAULT_METHOD = "ewc kfac-exact"
"""The group measured by default: class-incremental split MNIST, where outcomes are chaotic."""


def folder(results: Path, threads: int) -> Path:
    """Where the reruns with ``threads`` threads live."""
    return Path(results) / f"threads-{threads}"


def group_runs(runs: Sequence[Run], section: str, method: str, bn: str | None = None) -> list[Run]:
    """The selected test runs of one group (all statuses), by seed.

    Raises:
        ValueError: no selected run of that section and method (names what exists).
    """
    found = [
        r
        for r in runs
        if r.selected and r.sequence == section and r.label == method and bn in (None, r.bn)
    ]
    if not found:
        known = sorted({f"{r.sequence} / {r.label}" for r in runs if r.selected})
        raise ValueError(
            f"no selected test run of section {section!r} and method {method!r}; "
            f"selected groups: {'; '.join(known) or 'none'}"
        )
    return sorted(found, key=lambda r: r.seed)


def rerun_each(runs: Sequence[Run], out: Path, root: str | None) -> tuple[list[RunRecord], bool]:
    """Each run's config again, alone, into ``out``; and whether every one ran now.

    Finished reruns are reused; a pass that reused none ran whole, so its time is honest.
    """
    done = {r.run_id: r for r in read_records(out)} if (out / "runs").is_dir() else {}
    records = []
    for run in runs:
        record = done.get(run.record.run_id)
        if record is None:
            record = harness.run(RunConfig.from_dict(run.record.config), root=root, probe=False)
            write_record(out, record)
        records.append(record)
    return records, not done


def rerun(
    runs: Sequence[Run], results: Path, threads: int, root: str | None = None
) -> list[RunRecord]:
    """Each run's config again with ``threads`` threads; finished reruns are reused."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return rerun_each(runs, folder(results, threads), root)[0]
    finally:
        torch.set_num_threads(before)


def compare_runs(original: Sequence[Run], again: Sequence[RunRecord]) -> dict[str, Any]:
    """Run-by-run comparison of a group with its reruns (matched by run id), whatever changed.

    Per seed, the test average accuracy before and after and whether the accuracy matrices are
    bitwise equal; their median and largest absolute change; both means with their 95%
    intervals; and the paired difference after - before (``metrics.paired_test``: mean, CI, p),
    which says whether the change moved the group's outcomes in distribution.
    """
    by_id = {r.run_id: r for r in again}
    rows, unfinished = [], []
    for run in original:
        other = by_id.get(run.record.run_id)
        if other is None or not run.ok or other.status != "ok":
            before, after = run.record.status, "missing" if other is None else other.status
            if (before, after) != ("ok", "ok"):
                unfinished.append({"seed": run.seed, "before": before, "after": after})
            continue
        new = metrics.average_accuracy(other.acc_test)
        rows.append((run.seed, run.test_avg, new, run.record.acc_test == other.acc_test))
    diffs = [abs(b - a) for _, a, b, _ in rows if a is not None and b is not None]
    old_mean, old_half, _ = metrics.mean_ci([a for _, a, _, _ in rows])
    new_mean, new_half, _ = metrics.mean_ci([b for _, _, b, _ in rows])
    return {
        "section": original[0].sequence if original else "",
        "bn": original[0].bn if original and network_facts(original[0].record.config)[1] else "",
        "method": original[0].label if original else "",
        "n": len(rows),
        "identical": sum(1 for *_, same in rows if same),
        "median_abs_diff": statistics.median(diffs) if diffs else None,
        "max_abs_diff": max(diffs) if diffs else None,
        "mean_before": old_mean,
        "half_before": old_half,
        "mean_after": new_mean,
        "half_after": new_half,
        "paired": metrics.paired_test([b for *_, b, _ in rows], [a for _, a, *_ in rows]),
        "per_seed": [
            {"seed": s, "before": a, "after": b, "identical": same} for s, a, b, same in rows
        ],
        "unfinished": unfinished,
    }


def compare(original: Sequence[Run], again: Sequence[RunRecord], threads: int) -> dict[str, Any]:
    """``compare_runs``, with the thread counts before (from the records) and after."""
    threads_before = sorted(
        {run.record.provenance.get("torch_threads") for run in original} - {None}
    )
    return {
        **compare_runs(original, again),
        "threads_before": threads_before,
        "threads_after": threads,
    }


def load_checks(results: Path, runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The comparisons the reruns under ``results/threads-*/`` support (none: empty)."""
    checks = []
    for sub in sorted(Path(results).glob("threads-*")):
        if not (sub / "runs").is_dir() or not sub.name.removeprefix("threads-").isdigit():
            continue
        again = list(read_records(sub))
        ids = {r.run_id for r in again}
        original = [r for r in runs if r.selected and r.record.run_id in ids]
        if original:
            checks.append(compare(sorted(original, key=lambda r: r.seed), again, int(sub.name[8:])))
    return checks


def other_thread_count(group: Sequence[Run]) -> int:
    """A thread count none of the group's runs used.

    2 after 1 (what ``JOBS=auto`` gives), 1 after anything else, else one more than the most.
    """
    before = {r.record.provenance.get("torch_threads") for r in group} - {None}
    for candidate in (2, 1):
        if candidate not in before:
            return candidate
    return max(before) + 1


def measure(
    results: Path,
    selection_seeds: Sequence[int],
    threads: int | None = None,
    section: str = DEFAULT_SECTION,
    method: str = DEFAULT_METHOD,
    root: str | None = None,
    bn: str | None = None,
) -> dict[str, Any]:
    """Rerun one group of the sweep in ``results`` with ``threads`` threads and compare.

    ``threads`` None: ``other_thread_count`` of the group.
    """
    runs = summarise(load_records(Path(results), load_meta(Path(results))), selection_seeds)
    group = group_runs(runs, section, method, bn)
    modes = sorted({r.bn for r in group})
    if len(modes) > 1:
        raise ValueError(
            f"{section} / {method} ran with BatchNorm modes {modes}: choose one with --bn"
        )
    threads = threads or other_thread_count(group)
    return compare(group, rerun(group, Path(results), threads, root), threads)
