r"""scaling.md's section on the full Fisher's representation: dense P x P matrix or factor U.

A pure function of the record's ``representation`` entry (measured by
``benchmark.costs.scaling_representation``): the answer first (which representation costs less
per run of each protocol shape, at each N, and by how much), then the table, then what the
experiment files force (read from them when the record was made) set beside the measurement.
The maths the table tests: dense :math:`4 P^2` bytes, a fit of :math:`R P^2` multiply-adds on top
of the R gradient rows, one :math:`P^2` matvec per step whatever T (separate-mode dense terms
merge); factor :math:`4 R P` bytes, the R rows only, :math:`2 R P` multiply-adds per past task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .format import fmt_bytes, fmt_mib, fmt_ms, fmt_seconds, md_cell

HEADING = "## Dense or factor: the full Fisher's representation"
MISSING = "Not measured in this record (`scaling --representation-only` measures it)."
NAMES = {"dense": "the dense matrix", "factor": "the factor"}
"""How the answer names each representation."""

Row = dict[str, Any]


def rows_by_rep(point: Mapping[str, Any]) -> dict[str, Row]:
    """The point's rows keyed by representation."""
    return {r["representation"]: r for r in point["rows"]}


def run_costs(point: Mapping[str, Any], sequence: str) -> dict[str, float]:
    """Seconds per run of ``sequence`` of each representation measured at this point."""
    return {
        rep: r["runs"][sequence]
        for rep, r in rows_by_rep(point).items()
        if r.get("status") == "ok" and sequence in (r.get("runs") or {})
    }


def winner(point: Mapping[str, Any], sequence: str) -> tuple[str, float, float] | None:
    """(cheaper representation, its seconds, the other's) per run; None unless both measured."""
    costs = run_costs(point, sequence)
    if len(costs) < 2:
        return None
    best = min(costs, key=costs.__getitem__)
    other = max(v for k, v in costs.items() if k != best)
    return best, costs[best], other


def shape_text(shape: Mapping[str, Any]) -> str:
    """``1 fit, then 2,160 penalised steps at T = 1`` (or ``... at each T = 1, 2, 3, 4``)."""
    steps = [tuple(s) for s in shape["steps"]]
    fits = plural(shape["fits"], "fit")
    counts = {n for _, n in steps}
    if len(steps) > 1 and len(counts) == 1:
        tasks = ", ".join(str(t) for t, _ in steps)
        return f"{fits}, then {steps[0][1]:,} penalised steps at each T = {tasks}"
    return f"{fits}, then " + ", ".join(f"{n:,} penalised steps at T = {t}" for t, n in steps)


def and_list(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def plural(count: int, noun: str) -> str:
    """``1 round``, ``3 rounds``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def ratio_text(best_s: float, other_s: float) -> str:
    """``3.1x less: 5.2 s against 16.1 s``."""
    ratio = other_s / best_s if best_s > 0 else float("inf")
    return f"{ratio:.3g}x less: {fmt_seconds(best_s)} against {fmt_seconds(other_s)}"


def shape_answer(rep: Mapping[str, Any], shape: Mapping[str, Any]) -> str:
    """One sentence: per N, which representation costs less per run of this shape."""
    sequence = shape["sequence"]
    by_winner: dict[str, list[str]] = {}
    unknown = []
    for point in rep["points"]:
        won = winner(point, sequence)
        if won is None:
            unknown.append(f"{point['n']:,}")
            continue
        by_winner.setdefault(won[0], []).append(f"N = {point['n']:,} ({ratio_text(*won[1:])})")
    phrases = [f"{NAMES.get(w, w)} at {and_list(ns)}" for w, ns in by_winner.items()]
    if unknown:
        phrases.append(f"not compared at N = {', '.join(unknown)} (see the table)")
    return (
        f"Per run of `{sequence}` ({shape_text(shape)}), the cheaper is " + "; ".join(phrases) + "."
    )


def answer_lines(rep: Mapping[str, Any]) -> list[str]:
    """The answer first: one sentence per protocol shape."""
    return [" ".join(shape_answer(rep, shape) for shape in rep["shapes"])]


def method_lines(rep: Mapping[str, Any]) -> list[str]:
    """How it was measured, and the maths the numbers test."""
    s = rep["settings"]
    h, c, p = s["hidden"], s["classes"], s["parameters"]
    plains = [pt["plain_s"] for pt in rep["points"] if pt.get("plain_s") is not None]
    plain = f" ({fmt_ms(min(plains))}-{fmt_ms(max(plains))} ms)" if plains else ""
    load = " -> ".join(str(v) for v in rep.get("load_average", []))
    sources = " ".join(f"`{x['sequence']}`: {x['source']}." for x in rep["shapes"])
    return [
        f"`{s['estimator']}` (every label column: R = N x {c} factor rows) on the MLP "
        f"784-{h}-{h}-{c} without BatchNorm (P = {p:,}), seeded synthetic inputs, {s['dtype']}, "
        f"{plural(rep['threads'], 'torch thread')} on {rep['device']}, with "
        '`representation = "dense"` (the P x P matrix, 4·P² bytes) and `"factor"` (U, 4·R·P '
        f"bytes); budget {fmt_bytes(s['memory_budget'])}. Fit: best of "
        f"{plural(s['repeats'], 'round')} after one warm-up, each round in a fresh seeded "
        "order. Penalty: extra ms per training step (batch "
        f"{s['batch_size']}, {s['optimizer']}, lambda {s['lambda']:g}, the harness's training "
        f"step with the closed-form gradient) over a plain step{plain}, median of {s['steps']} "
        "interleaved steps, with T past tasks in separate mode: the dense terms merge into one "
        "matrix (one P² matvec whatever T), the factor keeps one term per task (2·R·P "
        "multiply-adds each). A dense fit adds R·P² multiply-adds to the R gradient rows that "
        "both compute.",
        "",
        "Per run: fits x the best fit + the consolidations (anchor copies, dense merges) + "
        "penalised steps x the penalty per step at their T; T = 2 and 3 are interpolated "
        "linearly between the measured T = 1 and T = 4 (the factor's cost grows linearly in T, the "
        f"dense cost is flat in T). {sources} Measured {rep.get('date', '?')}"
        + (f" at git {rep['git']}" if rep.get("git") else "")
        + f" (1-minute load average {load}) with "
        f"`{rep.get('command') or 'python -m benchmark scaling'}`.",
    ]


def penalty_cell(row: Row, tasks: int) -> str:
    """Extra ms per step at T = ``tasks``, or ``—``."""
    at = {p["tasks"]: p["extra_s"] for p in row.get("penalty", [])}
    return fmt_ms(at[tasks]) if tasks in at else "—"


def table_lines(rep: Mapping[str, Any]) -> list[str]:
    """One row per (N, representation): fit, MiB, penalty at T = 1 and 4, seconds per run."""
    shapes = [x["sequence"] for x in rep["shapes"]]
    tasks = rep["settings"]["past_tasks"]
    head = (
        "| N | rows R | representation | fit s | MiB | "
        + " | ".join(f"penalty ms/step T={t}" for t in tasks)
        + " | "
        + " | ".join(f"`{x}` s/run" for x in shapes)
        + " |"
    )
    lines = [
        head,
        "| "
        + " | ".join(["---:", "---:", "---"] + ["---:"] * (2 + len(tasks) + len(shapes)))
        + " |",
    ]
    for point in rep["points"]:
        for row in point["rows"]:
            lead = f"| {point['n']:,} | {point['rows_r']:,} | {row['representation']} | "
            if row.get("status") != "ok":
                needed = row.get("needed_bytes")
                status = (
                    f"{row.get('status')} (needs {fmt_bytes(needed)})"
                    if needed
                    else row.get("status")
                )
                blanks = " | ".join(["—"] * (1 + len(tasks) + len(shapes)))
                lines.append(lead + f"{md_cell(status)} | {blanks} |")
                continue
            cells = [f"{row['fit_s']:.3g}", fmt_mib(row["nbytes"])]
            cells += [penalty_cell(row, t) for t in tasks]
            cells += [f"{row['runs'][x]:.3g}" for x in shapes]
            lines.append(lead + " | ".join(cells) + " |")
    return lines


def forced_text(representation: str) -> str:
    """``forces `representation = "dense"` `` or, for ``auto``, what auto does."""
    if representation == "auto":
        return "leaves `representation` at `auto` (dense where P² fits the budget)"
    return f'forces `representation = "{representation}"`'


def uses_line(rows: Sequence[Row]) -> str:
    """What each experiment file forces, on which sequences, at which N and R."""
    groups: dict[tuple[str, str], dict[str, list[Row]]] = {}
    for r in rows:
        groups.setdefault((r["file"], r["representation"]), {}).setdefault(
            r["sequence"], []
        ).append(r)
    parts = []
    for (path, representation), sequences in groups.items():
        on = []
        for sequence, at in sequences.items():
            at = sorted(at, key=lambda r: r["fisher_samples"])
            ns = ", ".join(f"{r['fisher_samples']:,}" for r in at)
            rs = ", ".join(f"{r['rows_r']:,}" for r in at)
            per_head = f", {at[0]['classes']} classes per head" if at[0]["classes"] != 10 else ""
            on.append(f"{sequence} (N = {ns}: R = {rs}{per_head})")
        parts.append(f"`{path}` {forced_text(representation)} on {', '.join(on)}")
    return (
        "What the protocol uses (`ewc full-exact` on the MLP 784-16-16-10, read from the "
        "experiment files when this record was made): " + "; ".join(parts) + "."
    )


def verdict_line(rep: Mapping[str, Any], rows: Sequence[Row]) -> list[str]:
    """Each forced choice set beside the measurement, where the record measured its case."""
    s = rep["settings"]
    if s["hidden"] != rep["protocol"].get("hidden"):
        return [
            "",
            f"This record measured the MLP 784-{s['hidden']}-{s['hidden']}-10, not the "
            "protocol's network: its choices are not compared with these numbers.",
        ]
    points = {p["n"]: p for p in rep["points"]}
    agree, differ = [], []
    for r in rows:
        point = points.get(r["fisher_samples"])
        won = None if point is None else winner(point, r["sequence"])
        if won is None or r["representation"] not in NAMES:
            continue
        case = f"{r['experiment']} {r['sequence']} N = {r['fisher_samples']:,}"
        (agree if won[0] == r["representation"] else differ).append(case)
    if not agree and not differ:
        return []
    out = "Set beside this measurement (same network, sequence and N): "
    if agree:
        out += f"the forced representation is the cheaper one for {', '.join(agree)}"
    if differ:
        out += "; " if agree else ""
        out += f"the other one is cheaper for {', '.join(differ)}"
    return ["", out + "."]


def protocol_lines(rep: Mapping[str, Any]) -> list[str]:
    """What the experiment files force, and how that compares with the measurement."""
    protocol = rep.get("protocol") or {}
    if protocol.get("error"):
        return [f"What the protocol uses was not read: {md_cell(protocol['error'], 300)}."]
    rows = protocol.get("rows") or []
    if not rows:
        return ["No experiment file runs `ewc full-exact` on the MLP 784-16-16-10."]
    return [uses_line(rows), *verdict_line(rep, rows)]


def representation_section(record: Mapping[str, Any]) -> list[str]:
    """The section: answer, how it was measured, the table, what the protocol uses."""
    rep = record.get("representation")
    lines = [HEADING, ""]
    if not rep:
        return [*lines, MISSING, ""]
    return [
        *lines,
        *answer_lines(rep),
        "",
        *table_lines(rep),
        "",
        *method_lines(rep),
        "",
        *protocol_lines(rep),
        "",
    ]
