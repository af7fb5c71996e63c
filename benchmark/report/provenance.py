"""The provenance lines every report opens with: command, machine, versions, dates.

The reports read what the measuring code recorded (``benchmark.provenance.machine`` and the
command, SHA and times stored beside it) and never look at the machine they run on, so a report
is a pure function of its record. The pieces (``command_item``, ``machine_text``,
``libraries_text``, ``git_text``, ``started_finished``) serve every report; REPORT.md's whole
provenance section (``report_provenance``), built from a sweep's metadata and its records, is
here too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..config import RESULTS_VERSIONS
from ..outcomes import Run, sequences, setting_text
from ..selection import selection_seeds_of
from .format import (
    CONFIDENCE,
    fmt_ci,
    fmt_duration,
    fmt_fixed,
    fmt_num,
    fmt_p,
    fmt_seconds,
    fmt_signed,
)

REPORT_LIBRARIES = ("numpy", "scipy", "torchvision")
"""Library versions REPORT.md shows beside Python and torch, where the sweep recorded them."""
MACHINE_PARTS = ("platform", "cpu", "gpu", "device", "torch_threads")
"""What ``machine_text`` shows, in order."""


def command_item(command: str | None) -> str:
    """``- Command: `python -m benchmark ...``` (``not recorded`` when empty)."""
    return f"- Command: `{command}`" if command else "- Command: not recorded"


def machine_text(
    machine: dict[str, Any] | str | None, parts: tuple[str, ...] = MACHINE_PARTS
) -> str:
    """One line describing the hardware: platform, CPU and cores, GPU, device, torch threads.

    Args:
        machine: a ``benchmark.provenance.machine`` dict (or text, shown as is).
        parts: which of ``MACHINE_PARTS`` to show; a part that was not recorded is left out.
    """
    if machine is None or machine == {}:
        return "not recorded"
    if not isinstance(machine, dict):
        return str(machine)
    texts = {
        "platform": lambda: str(machine["platform"]),
        "cpu": lambda: (
            f"CPU: {machine['cpu']}"
            + (f" ({machine['cores']} cores)" if machine.get("cores") else "")
        ),
        "gpu": lambda: f"GPU: {machine['gpu']}",
        "device": lambda: f"device {machine['device']}",
        "torch_threads": lambda: f"torch threads {machine['torch_threads']}",
    }
    shown = [texts[part]() for part in parts if machine.get(part)]
    return "; ".join(shown) if shown else "not recorded"


def libraries_text(machine: dict[str, Any], extra: tuple[str, ...] = ()) -> str:
    """``Python 3.11.7, torch 2.4.1`` (and the ``extra`` libraries that were recorded)."""
    parts = [
        f"{name} {machine[key]}"
        for key, name in (("python", "Python"), ("torch", "torch"))
        if machine.get(key)
    ]
    parts += [f"{key} {machine[key]}" for key in extra if machine.get(key)]
    return ", ".join(parts)


def git_text(sha: str | None) -> str:
    """``git <sha>``, or ``git SHA not recorded``."""
    return f"git {sha}" if sha else "git SHA not recorded"


def started_finished(started: str | None, finished: str | None) -> str:
    """``Started <time>, finished <time>`` (``not recorded`` for a missing time)."""
    return f"Started {started or 'not recorded'}, finished {finished or 'not recorded'}"


# -- REPORT.md's provenance section ------------------------------------------------------------


def _machine(meta: dict[str, Any]) -> dict[str, Any]:
    for key in ("machine", "provenance", "environment"):
        value = meta.get(key)
        if isinstance(value, dict):
            return value
    return {}


def _lookup(meta: dict[str, Any], *keys: str) -> Any:
    machine = _machine(meta)
    for key in keys:
        if meta.get(key) is not None:
            return meta[key]
        if machine.get(key) is not None:
            return machine[key]
    return None


def versions_text(meta: dict[str, Any]) -> str:
    """Python, torch (and other recorded library versions) and the git SHA of a sweep."""
    machine = _machine(meta)
    found = {key: machine.get(key) or meta.get(key) for key in ("python", "torch")}
    found.update({key: machine.get(key) for key in REPORT_LIBRARIES})
    libraries = libraries_text(found, REPORT_LIBRARIES)
    sha = git_text(_lookup(meta, "git_sha", "git"))
    return f"{libraries}, {sha}" if libraries else sha


def _protocol_lines(protocol: Any) -> list[str]:
    if protocol is None:
        return []
    if isinstance(protocol, str):
        return [f"- Protocol: {protocol}"]
    if isinstance(protocol, dict):
        items = [f"{k}: {setting_text(v)}" for k, v in protocol.items()]
    else:
        items = [str(p) for p in protocol]
    return ["- Protocol:", *[f"  - {item}" for item in items]]


def _secs(x: Any) -> str:
    return "—" if x is None else f"{float(x):.1f} s"


def pipeline_text(pipeline: dict[str, Any]) -> str:
    """One line on the data pipeline: DataLoader + ToTensor epoch vs in-memory tensors."""
    loader = pipeline.get("dataloader_seconds")
    tensor = pipeline.get("tensor_seconds")
    ratio = pipeline.get("ratio")
    if ratio is None and loader and tensor:
        ratio = loader / tensor
    batches = pipeline.get("dataloader_batches_only_seconds")
    text = f"- Data pipeline: one training epoch takes {_secs(loader)} with a DataLoader and "
    text += "per-item ToTensor"
    if batches is not None:
        text += f" ({_secs(batches)} of it producing the batches)"
    text += f", {_secs(tensor)} with the data held as tensors"
    if ratio is not None:
        text += f" ({fmt_num(ratio)}x)"
    machine = pipeline.get("machine")
    if machine:
        text += f"; {machine_text(machine)}"
    return text


def _seed_mismatch(meta: dict[str, Any], selection_seeds: Sequence[int]) -> str:
    recorded = list(selection_seeds_of(meta)) if "selection_seeds" in meta else None
    if recorded is None or recorded == list(selection_seeds):
        return ""
    return (
        f" Note: the sweep chose lambda with seeds {recorded}; this report uses "
        f"{list(selection_seeds)}."
    )


def record_shas(runs: Sequence[Run]) -> str:
    """``sha (n runs), ...`` of the git SHAs recorded in the runs' provenance."""
    counts = Counter(str(r.record.provenance.get("git_sha")) for r in runs)
    return ", ".join(f"{sha} ({n} runs)" for sha, n in sorted(counts.items()))


def results_version_text(runs: Sequence[Run]) -> str:
    """Which harness made the records (``config.RESULTS_VERSION``), and what changed in it."""
    counts = Counter(r.record.provenance.get("results_version", 1) for r in runs)
    parts = [
        f"version {v} ({n} runs: {RESULTS_VERSIONS.get(v, 'unknown')})"
        for v, n in sorted(counts.items())
    ]
    return (
        "- Harness: results "
        + "; ".join(parts)
        + ". The version is part of every run id, so records of another version are never reused"
    )


def peak_memory_text(runs: Sequence[Run]) -> str:
    """The largest peak resident memory of any run (runs go one per process slot)."""
    peaks = [(r.record.peak_rss_mb, r) for r in runs if r.record.peak_rss_mb is not None]
    if not peaks:
        return "- Peak memory: not recorded"
    mb, run = max(peaks, key=lambda p: p[0])
    return (
        f"- Peak memory: {mb:,.0f} MiB resident, the largest of any run "
        f"({run.record.config['sequence']}, {run.label}); each run's peak is in "
        "[runs.csv](runs.csv)"
    )


def sweep_memory_text(meta: dict[str, Any]) -> str | None:
    """The sweep's peak memory, driver and workers together (``benchmark.memwatch``).

    The largest over the invocations that measured it; None when none did (older sweeps).
    """
    calls = [
        c
        for c in meta.get("invocations") or []
        if isinstance(c, dict)
        and isinstance(c.get("memory"), dict)
        and c["memory"].get("peak_pss_bytes")
    ]
    if not calls:
        return None
    top = max(calls, key=lambda c: c["memory"]["peak_pss_bytes"])
    mem = top["memory"]
    peak = int(mem["peak_pss_bytes"])
    count = int(mem.get("processes_at_peak") or 1)
    among = ""
    if len(calls) > 1:
        among = f", the largest of the {len(calls)} invocations that measured it"
    every = [c for c in meta.get("invocations") or [] if isinstance(c, dict)]
    unmeasured = [c for c in every if c not in calls]
    if unmeasured:
        runs = sum(int(c.get("ran_now") or 0) for c in unmeasured)
        among += (
            f"; {len(unmeasured)} other invocation{'s' if len(unmeasured) > 1 else ''} "
            f"({runs} runs) did not measure it"
        )
    return (
        f"- Sweep memory: peak {peak / 1e9:.2f} GB ({peak / 2**30:.2f} GiB) summed over "
        f"{count} process{'es' if count != 1 else ''} of this machine (the sweep's driver, its "
        "workers and multiprocessing's helper processes; workers on other machines are not "
        f"counted): proportional set size, sampled every "
        f"{float(mem.get('interval_seconds') or 0):g} s, so a lower bound of the true peak "
        f"(`benchmark.memwatch`), in the invocation started "
        f"{top.get('started') or 'at an unrecorded time'} that ran {top.get('ran_now', '?')} "
        f"runs{among}"
    )


def _when(meta: dict[str, Any]) -> str:
    """``- Started ..., finished ...; duration ...`` (with the compute time summed over runs).

    When the records were made over several invocations (a resumed or extended sweep), the line
    gives each invocation's wall time and how many runs it ran.
    """
    compute = meta.get("compute_seconds")
    spent = f" (compute: {fmt_duration(compute)} summed over runs)" if compute is not None else ""
    calls = [c for c in meta.get("invocations") or [] if isinstance(c, dict)]
    if len(calls) > 1:
        each = "; ".join(
            f"{c.get('started') or 'not recorded'}, {fmt_duration(c.get('duration_seconds'))} "
            f"for {c.get('ran_now', '?')} runs (git {str(c.get('git_sha'))[:7]})"
            for c in calls
        )
        total = sum(float(c.get("duration_seconds") or 0) for c in calls)
        return (
            f"- Made over {len(calls)} invocations, {fmt_duration(total)} of wall time in all"
            f"{spent}: {each}"
        )
    return (
        f"- {started_finished(meta.get('started'), meta.get('finished'))}; duration "
        f"{fmt_duration(meta.get('duration_seconds'))}{spent}"
    )


def _records_text(runs: Sequence[Run]) -> str:
    statuses = Counter(r.record.status for r in runs)
    seeds = sorted({r.seed for r in runs})
    return (
        f"- Records: {len(runs)} runs ({statuses['diverged']} diverged, {statuses['failed']} "
        f"failed); sequences {', '.join(sequences(runs))}; seeds "
        f"{', '.join(str(s) for s in seeds)}; git SHAs in the records: {record_shas(runs)}"
    )


def parallel_text(meta: dict[str, Any], runs: Sequence[Run]) -> str:
    """How many runs ran at once and with how many torch threads each (from the records)."""
    threads = Counter(r.record.provenance.get("torch_threads") for r in runs)
    per_run = ", ".join(
        f"{t if t is not None else 'not recorded'} ({n} runs)"
        for t, n in sorted(threads.items(), key=lambda item: (item[0] is None, item[0] or 0))
    )
    jobs = (meta.get("parallel") or {}).get("jobs")
    at_once = f"{jobs} runs at once in the last invocation; " if jobs else ""
    return (
        f"- Parallelism: {at_once}torch threads per run: {per_run}. Numbers are bitwise "
        "reproducible for the same machine and thread count; the per-step costs of the cost "
        "table are measured inside the runs (plain and penalised steps interleaved, so both see "
        "the same load, including other runs sharing the machine)"
    )


def thread_check_text(check: dict[str, Any]) -> str:
    """One measured thread-count sensitivity (``benchmark.threads.compare``) as a list item."""
    before = "/".join(map(str, check.get("threads_before") or ["?"]))
    where = f"{check['section']} (bn = {check['bn']})" if check.get("bn") else check["section"]
    if not check.get("n"):
        return f"- Thread count: the reruns of {where} {check['method']} hold no finished pair"
    return (
        f"- Thread count, measured: the {check['n']} test runs of {where}, {check['method']}, "
        f"rerun with {check['threads_after']} torch threads instead of {before}: "
        f"{check['identical']} of {check['n']} bitwise identical; per seed, test average "
        f"accuracy moved by {fmt_fixed(check['median_abs_diff'])} (median) and at most "
        f"{fmt_fixed(check['max_abs_diff'])}; the group's mean "
        f"{fmt_ci(check['mean_before'], check['half_before'])} became "
        f"{fmt_ci(check['mean_after'], check['half_after'])}"
        + "".join(
            f"; seed {u['seed']} {u['before']} before, {u['after']} after"
            for u in check.get("unfinished") or []
        )
        + " (`python -m benchmark threads`)"
    )


def end_to_end_text(measured: dict[str, Any]) -> str:
    """``make reproduce``'s measured end-to-end time (``benchmark.clock``) as a list item."""
    sha = (measured.get("git_sha") or "unknown")[:7]
    cpu = f" on {measured['cpu']}, {measured['cores']} cores" if measured.get("cpu") else ""
    return (
        f"- End to end: `make reproduce` took {fmt_duration(measured['seconds'])}{cpu} "
        f"(started {measured.get('started')}, finished {measured.get('finished')}, commit {sha}): "
        "from make's start (install and data check included) through the sweep, the thread and "
        "grouped checks and the study to this report's last build; an invocation that reuses "
        "records measures only its own work (see the invocations above)"
    )


def grouped_check_text(check: dict[str, Any]) -> str:
    """One measured effect of grouped training (``benchmark.grouped_check``) as a list item."""
    alone, grouped, size = check["alone"], check["grouped"], check["size"]
    where = (
        f"{grouped['section']} (bn = {grouped['bn']})" if grouped.get("bn") else grouped["section"]
    )
    if not grouped.get("n"):
        return (
            f"- Grouped training: the reruns of {where} {grouped['method']} hold no finished pair"
        )
    paired = grouped.get("paired") or {}
    timing = check.get("timing")
    speed = (
        f"; timed in one process, one pass after the other at {timing['threads']} torch "
        f"thread(s): alone {fmt_seconds(timing['alone_seconds'])}, stacked "
        f"{fmt_seconds(timing['grouped_seconds'])}, "
        f"{timing['alone_seconds'] / timing['grouped_seconds']:.2f}x the runs per minute"
        if timing
        else ""
    )
    return (
        f"- Grouped training, measured: the {grouped['n']} test runs of {where}, "
        f"{grouped['method']}, rerun alone: {alone['identical']} of {alone['n']} bitwise identical "
        f"to the sweep's records; trained in stacks of {size} (`--group-size {size}`): "
        f"{grouped['identical']} of {grouped['n']} bitwise identical, per seed test average "
        f"accuracy moved by {fmt_fixed(grouped['median_abs_diff'])} (median) and at most "
        f"{fmt_fixed(grouped['max_abs_diff'])}, paired difference stacked - sweep "
        f"{fmt_signed(paired.get('mean_diff'))} [{fmt_signed(paired.get('ci_low'))}, "
        f"{fmt_signed(paired.get('ci_high'))}] (p {fmt_p(paired.get('t_pvalue'))}); the group's "
        f"mean {fmt_ci(grouped['mean_before'], grouped['half_before'])} became "
        f"{fmt_ci(grouped['mean_after'], grouped['half_after'])}{speed} "
        "(`python -m benchmark grouped`)"
    )


def report_provenance(
    meta: dict[str, Any],
    pipeline: dict[str, Any] | None,
    runs: Sequence[Run],
    selection_seeds: Sequence[int],
) -> str:
    """REPORT.md's "How this report was produced": command, machine, versions, dates, protocol."""
    lines = [
        "## How this report was produced",
        "",
        command_item(meta.get("command")),
        f"- Machine: {machine_text(_machine(meta))}",
        f"- Versions: {versions_text(meta)}",
        _when(meta),
        _records_text(runs),
        peak_memory_text(runs),
        *([text] if (text := sweep_memory_text(meta)) else []),
        parallel_text(meta, runs),
        *(thread_check_text(c) for c in meta.get("thread_checks") or []),
        *(grouped_check_text(c) for c in meta.get("grouped_checks") or []),
        *([end_to_end_text(meta["end_to_end"])] if meta.get("end_to_end") else []),
        results_version_text(runs),
        *_protocol_lines(meta.get("protocol") or meta.get("notes") or meta.get("protocol_notes")),
        f"- Lambda: chosen per group (sequence, method, bn and every other setting) on the "
        f"validation split of the selection seeds ({', '.join(map(str, selection_seeds))}): "
        f"the highest mean validation average accuracy over them, ties to the smaller lambda, "
        f"a lambda that diverged on any of them never chosen. Selection runs are never test "
        f"runs: tables report the test split of the test seeds at the chosen lambda, mean ± "
        f"half-width of a {CONFIDENCE:.0%} Student-t interval over seeds; diverged or failed "
        f"runs are counted and left out." + _seed_mismatch(meta, selection_seeds),
    ]
    if pipeline:
        lines.append(pipeline_text(pipeline))
    lines.append(
        "- Rebuilt from the run records alone (`benchmark.report.build_report`); "
        "every run is listed in [runs.csv](runs.csv)."
    )
    return "\n".join(lines)
