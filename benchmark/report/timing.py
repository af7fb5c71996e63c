"""timing.md and timing.json: the estimator timing report, a pure function of the timing record.

``render_markdown(record)`` is golden-tested (``tests/test_timing_report.py``); what the record
holds and how it is measured is ``benchmark.costs.timing`` (and ``benchmark.costs.compare`` for
the other libraries' rows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..timing_record import LIBRARIES, ratios
from .format import fmt_bytes, fmt_mib, fmt_ms, fmt_ratio, md_cell
from .provenance import command_item, git_text, libraries_text, machine_text

MEMORY_FAILED = "the fit did not succeed"
"""The memory reason of a row whose fit failed (its own note says so already)."""

VARIANT_NOTES = {
    "factors=a-diag": "G (x) diag A",
    "factors=g-diag": "diag G (x) A",
    "factors=diag": "diag G (x) diag A (a diagonal curvature)",
    "factors=a-only": "I (x) A, the feature penalty without the output-gradient factor",
    "layers=hidden": "Kronecker blocks on the hidden layers only (every Linear but the last)",
    "layers=output": "a Kronecker block on the output layer only (the last Linear)",
    "output_curvature=mean": "the exact Jacobians with the softmax curvature diag(p) - p p^T "
    "averaged over the N inputs (one C x C matrix instead of one per input)",
}
"""What each variant option keeps (README's "Ablation options"); outside KFAC's Kronecker blocks
every parameter keeps its exact diagonal."""


def write_reports(record: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``timing.json`` and ``timing.md`` into ``out``; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "timing.json", out / "timing.md"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    md_path.write_text(render_markdown(record))
    return json_path, md_path


def render_markdown(record: dict[str, Any]) -> str:
    """The Markdown report for a timing record (pure: same record, same text)."""
    lines = header_section(record)
    for size in record["sizes"]:
        lines += size_section(size, record["settings"])
    lines += penalty_section(record.get("penalty"), record["settings"]["model"])
    lines += compare_section(record.get("compare"))
    return "\n".join(lines).rstrip("\n") + "\n"


# -- cells -------------------------------------------------------------------------------------


def memory_cell(memory: dict[str, Any] | None) -> str:
    """Extra peak MiB, or ``n/a``."""
    return fmt_mib((memory or {}).get("extra_bytes"))


def status_cell(row: dict[str, Any]) -> str:
    """What a failed row shows instead of a time."""
    if row["status"] == "refused":
        return md_cell(
            f"refused: needs {fmt_bytes(row['needed_bytes'])} "
            f"(budget {fmt_bytes(row['budget_bytes'])})"
        )
    return md_cell(row["message"])


def time_cell(row: dict[str, Any], repeats: int) -> str:
    """Median milliseconds, with a dagger when fewer repeats than configured were timed."""
    text = fmt_ms(row["median_s"])
    return text + " †" if row.get("repeats", repeats) < repeats else text


def fit_row(row: dict[str, Any], label: str, floor_s: float, naive_s: float, repeats: int) -> str:
    """One table row for an estimator (or a reference)."""
    if row["status"] != "ok":
        return f"| {label} | {status_cell(row)} | — | — | — | — |"
    r = ratios(row, floor_s, naive_s)
    nbytes = row.get("nbytes")
    return (
        f"| {label} | {time_cell(row, repeats)} | {fmt_ratio(r['x_floor'])} | "
        f"{fmt_ratio(r['naive_over_time'])} | {memory_cell(row.get('memory'))} | "
        f"{'—' if nbytes is None else f'{nbytes:,}'} |"
    )


# -- sections ----------------------------------------------------------------------------------


def size_notes(size: dict[str, Any], repeats: int, memory_reason: str | None) -> list[str]:
    """Footnotes under one size's table."""
    naive = size["naive"]
    notes = []
    if naive.get("scale", 1.0) != 1.0:
        notes.append(
            f"Naive loop timed on the first {naive['measured_inputs']:,} inputs "
            f"({fmt_ms(naive['measured_median_s'])} ms) and scaled linearly by "
            f"{naive['scale']:g} to N = {size['n']:,}; its memory is for "
            f"{naive['measured_inputs']:,} inputs, its bytes are the accumulated diagonal."
        )
    fewer = [
        f"{r['name']} ({r['repeats']})"
        for r in [size["naive"], *size["estimators"]]
        if r["status"] == "ok" and r.get("repeats", repeats) < repeats
    ]
    if fewer:
        notes.append(
            f"† median of fewer than {repeats} repeats (slow warm-up): " + ", ".join(fewer) + "."
        )
    notes += ekfac_notes(size["estimators"])
    return notes + memory_notes(size, memory_reason) + variant_notes(size["estimators"])


def ekfac_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What ekfac-exact costs over kfac-exact, and where the difference goes (or nothing)."""
    times = {r["name"]: r.get("median_s") for r in rows if r.get("status") == "ok"}
    ekfac, kfac = times.get("ekfac-exact"), times.get("kfac-exact")
    if not ekfac or not kfac:
        return []
    return [
        f"ekfac-exact takes {ekfac / kfac:.2f}x kfac-exact's time. Its first pass is "
        "kfac-exact's whole fit; after it come the eigendecompositions of every layer's two "
        "factors (a fixed cost, O(d^3) per d x d factor whatever N: on the tutorial network the "
        "first layer's 785 x 785 input factor, less the rows of pixels that are zero on every "
        "fitted input) and one projection of the first pass's kept inputs and output gradients "
        "into the eigenbases (O(N d^2), like KFAC's own factor sums), so the fixed part's share "
        "falls as N grows."
    ]


def variant_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One note saying what the table's variant rows keep (none without variant rows).

    A variant row has ``options`` (timing records from version 2 on); its label is the estimator
    name followed by those options as ``key=value`` words.
    """
    words = [w for r in rows if r.get("options") for w in r["name"].split()[1:]]
    if not words:
        return []
    kept = [f"`{w}`: {VARIANT_NOTES.get(w, 'see README')}" for w in dict.fromkeys(words)]
    return [
        "Variants: a row `NAME key=value` times NAME with options that change its structure, "
        "labelled as in the experiments (README, Ablation options); outside Kronecker blocks "
        "every parameter keeps its exact diagonal. " + "; ".join(kept) + "."
    ]


def memory_notes(size: dict[str, Any], memory_reason: str | None) -> list[str]:
    """One note per unexpected reason for a missing memory figure, naming the rows."""
    names: dict[str, list[str]] = {}
    for r in [size["floor"], size["naive"], *size["estimators"]]:
        memory = r.get("memory") or {}
        reason = memory.get("reason")
        if memory.get("extra_bytes") is None and reason not in (None, memory_reason, MEMORY_FAILED):
            names.setdefault(reason, []).append(r["name"])
    return [
        f"Memory n/a for {', '.join(rows)}: {md_cell(reason, 300)}"
        for reason, rows in sorted(names.items())
    ]


def fit_label(row: dict[str, Any]) -> str:
    """The row's name and the options it was timed with that the name does not show.

    ``fit_options`` (every option of the fit), e.g. the low-rank rows' ``rank=200``; a memory
    budget limits the fit without defining it, and is not shown.
    """
    shown = {**(row.get("options") or {}), "memory_budget": None}
    extra = {k: v for k, v in (row.get("fit_options") or {}).items() if k not in shown}
    return " ".join([row["name"], *(f"{k}={v}" for k, v in extra.items())])


def size_section(size: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The table (and notes) for one N."""
    repeats = settings["repeats"]
    floor_s, naive_s = size["floor"]["median_s"], size["naive"]["median_s"]
    lines = [
        f"## N = {size['n']:,}",
        "",
        "| estimator | time (ms) | x floor | naive / time | extra peak MiB | curvature bytes |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        fit_row(size["floor"], "*floor* (batched forward + backward)", floor_s, naive_s, repeats),
        fit_row(size["naive"], "*naive loop* (per-input backward)", floor_s, naive_s, repeats),
    ]
    lines += [fit_row(r, fit_label(r), floor_s, naive_s, repeats) for r in size["estimators"]]
    notes = size_notes(size, repeats, settings["memory"].get("reason"))
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return [*lines, ""]


def penalty_section(penalty: dict[str, Any] | None, model: str) -> list[str]:
    """The EWC penalty-overhead table (``model``: the network that was timed)."""
    if not penalty:
        return []
    lines = [
        "## EWC penalty cost per training step",
        "",
        f"One training step of {model} (train mode) at batch {penalty['batch_size']}: forward, "
        f"cross-entropy, backward, {penalty['optimizer']} step; with the penalty "
        "the harness's penalty `0.5 * lam * (theta - theta_old)^T F (theta - theta_old)`, "
        "entering through its gradient `lam * F (theta - theta_old)` added after the backward "
        f"(lam = "
        f"{penalty['lam']:g}), curvatures fitted on N = {penalty['n']:,}. Median over "
        f"{penalty['steps']:,} steps per variant, all variants interleaved in one loop, every "
        f"round in a fresh seeded order (after {penalty['warmup_steps']} warm-up rounds).",
        "",
        "| estimator | representation | curvature bytes | step (ms) | overhead |",
        "| --- | --- | ---: | ---: | ---: |",
        f"| *plain* (no penalty) | — | — | {fmt_ms(penalty['plain']['median_s'])} | — |",
    ]
    for row in penalty["rows"]:
        label = row["name"] + "".join(f", {k}={v}" for k, v in row.get("options", {}).items())
        if row["status"] != "ok":
            lines.append(f"| {label} | {status_cell(row)} | — | — | — |")
            continue
        lines.append(
            f"| {label} | {row['structure']} | {row['nbytes']:,} | {fmt_ms(row['median_s'])} | "
            f"{row['overhead_pct']:+.1f}% |"
        )
    return [*lines, ""]


def memory_text(memory: dict[str, Any]) -> str:
    """How extra peak memory was measured (the method recorded in the settings)."""
    if memory["method"] == "proc":
        return (
            "VmHWM after the fit minus VmRSS before it, in a fresh process per row "
            "(peak reset through /proc/self/clear_refs after loading data and model)"
        )
    if memory["method"] == "cuda":
        return "torch.cuda.max_memory_allocated during the fit minus allocated before"
    return f"n/a: {memory['reason']}"


def header_section(record: dict[str, Any]) -> list[str]:
    """Title, machine, versions, command, date and the method."""
    env, s = record["environment"], record["settings"]
    repeats = s["repeats"]
    load = " -> ".join(
        "n/a" if v is None else f"{v:g}"
        for v in (env.get("load_average_start"), env.get("load_average_end"))
    )
    return [
        "# Estimator timing",
        "",
        "Generated by `python -m benchmark timing` (benchmark/costs/timing.py); "
        "raw numbers in timing.json. How the costs grow with N, model size, classes and past "
        "tasks, and where the dense Fisher stops fitting: [scaling.md](scaling.md).",
        "",
        f"- Machine: {machine_text(env)}; 1-minute load average {load} (start -> end)",
        f"- Versions: {libraries_text(env)}; {git_text(env.get('git_sha'))}",
        command_item(env.get("command")),
        f"- Date: {env['date']}",
        f"- Model: {s['model']} ({s['parameters']:,} parameters, {s['dtype']}, seeded init, "
        f"BatchNorm statistics from {s['bn_warmup_inputs']:,} training inputs, eval mode); "
        f"inputs: {s['data']}",
        f"- Time: median of {repeats} call{'s' if repeats != 1 else ''} after one warm-up "
        f"(fewer, marked †, when the warm-up exceeds {s['slow_budget_s'] / repeats:g} s); "
        "x floor = time / floor, naive / time = naive loop / time",
        "- Floor: one batched forward + backward of the mean cross-entropy over the same N "
        "inputs (all parameters), timed right before every timed call of the other rows, which "
        "run in interleaved rounds in a fresh seeded order each, so that all see the same machine "
        "load and none always follows the same row; "
        "naive loop: one forward + backward per input, squared gradients accumulated",
        f"- Extra peak memory: {memory_text(s['memory'])}",
        "",
    ]


# -- against other libraries (benchmark.compare's rows) ----------------------------------------


def compare_row(row: dict[str, Any]) -> str:
    """One library's row: time, ratio to the floor, and agreement of its diagonal with ours."""
    lead = f"| {row['library']} | {row['method']} | {row['ours']} |"
    if row.get("status") != "ok":
        timing = md_cell(f"{row.get('status')}: {row.get('message', '')}", 100)
        return f"{lead} {timing} | — | — |"
    if row["library"] == "ewc-bench":
        agree = "—"
    elif row.get("rel_diff") is None:
        agree = md_cell(f"failed: {row.get('error', '?')}", 100)
    else:
        agree = f"{row['rel_diff']:.2e} vs {row['against']}"
    return f"{lead} {fmt_ms(row['median_s'])} | {fmt_ratio(row.get('x_floor'))} | {agree} |"


def compare_section(compare: dict[str, Any] | None) -> list[str]:
    """The table against other libraries (pure)."""
    if not compare:
        return []
    have = ", ".join(f"{LIBRARIES[k]} {v}" for k, v in compare["versions"].items() if v)
    lines = [
        "## Against other libraries",
        "",
        f"{compare['model']} ({compare['parameters']:,} parameters), N = {compare['n']:,}, the "
        "same inputs, timed in the same interleaved rounds against this network's own floor "
        f"({fmt_ms(compare['floor']['median_s'])} ms). BatchNorm is left out for every row: the "
        "other libraries do not handle it in eval mode. Agreement: relative difference of the "
        "diagonal from ours, ||d - d_ours|| / ||d_ours|| (for KFAC, the diagonal of the "
        "Kronecker approximation; for EKFAC, of the eigen-corrected matrix); sampled rows are "
        "compared against the exact quantity, so they differ by sampling noise. "
        "Installed: " + (have or "none") + ".",
        "",
        "| library | method | ours | time (ms) | x floor | diagonal vs ours |",
        "| --- | --- | --- | ---: | ---: | --- |",
        *[compare_row(row) for row in compare["rows"]],
    ]
    if compare.get("missing"):
        lines += ["", f"Skipped: {compare['missing']}."]
    return [*lines, ""]
