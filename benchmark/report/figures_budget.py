r"""The row budget: each EWC structure's outcome against N, the inputs its curvature was fitted on.

Where a report section and BatchNorm mode holds EWC methods whose runs used more than one
``fisher_samples`` N (``outcomes.display_labels`` then suffixes their labels with
``fisher_samples=N``), each *structure* is one line: the label without that setting in its
suffix (``ewc full-exact (fisher_samples=20)`` is ``ewc full-exact`` at N = 20; an unsuffixed
label is its own structure, at its runs' N). At each N, the structure's runs are the selected
test runs at the lambda chosen for that N (each N has its own selection).

- ``plot_budget``: two panels, test average accuracy and forgetting (lower is better) against N
  on a log axis, one line per structure in its palette colour (``palette.colour`` of the
  structure, so every structure keeps its colour), the mean over the finished test seeds with its
  95% Student-t interval :math:`\bar x \pm t_{0.975,\,n-1}\, s / \sqrt n` (``metrics.mean_ci``)
  as an error bar, every seed as a faint dot;
- ``budget_sentences``: for each pair of structures A before B that ran at two or more common N
  (order: the diagonal reference first, the full Fisher last, the others in report order between,
  so that B − A reads as the richer structure minus the simpler), at each such N the paired
  difference B − A over the test seeds both finished,
  :math:`d_s = x_{B,s} - x_{A,s}`, :math:`\bar d \pm t_{0.975,\,n-1}\, s_d / \sqrt n`
  (``cells.paired``: the test of the results tables and the verdict), of test average accuracy
  and of forgetting; so a reader sees whether one structure's advantage grows with N.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..outcomes import Run, selected
from .cells import paired
from .figures_common import (
    DOT_SIZE,
    mean_ci,
    method_legend,
    plotted_labels,
    spread,
    values_of,
)
from .format import new_figure, save_figure
from .palette import GRID_ALPHA, colour, family, line_style, marker
from .references import base_label, is_reference, label_config
from .verdict import interval

FIELD = "fisher_samples"
"""The setting whose values are the row budgets N."""
SUFFIX_SPLIT = re.compile(r", (?=[A-Za-z_]\w*=)")
"""Between two ``name=value`` entries of a label suffix."""
PANELS = (("test_avg", "test average accuracy"), ("forgetting", "forgetting (lower is better)"))
NUDGE = 0.03
"""Decades between neighbouring structures' markers at one N (so that none hides another)."""
SEED_ALPHA = 0.3
SEED_WIDTH = 0.025
"""Decades over which one point's seed dots are spread."""
CI_TEXT = "95% Student-t interval"

Points = dict[str, dict[int, str]]
"""Structure -> N -> the display label of its runs at N."""


def structure(label: str) -> str:
    """The label without ``fisher_samples=N`` in its suffix (the suffix goes if nothing is left)."""
    base, sep, rest = label.partition(" (")
    if not sep:
        return label
    kept = [p for p in SUFFIX_SPLIT.split(rest.removesuffix(")")) if not p.startswith(FIELD + "=")]
    return f"{base} ({', '.join(kept)})" if kept else base


def budget_points(runs: Sequence[Run], sequence: str, bn: str) -> Points:
    """Every EWC structure with a finished selected run, its N and labels, in report order."""
    out: Points = {}
    for label in plotted_labels(runs, sequence, bn):
        if not base_label(label).startswith(("ewc ", "ewc-online ")):
            continue
        n = label_config(runs, sequence, bn, label).get(FIELD)
        if n is not None:
            out.setdefault(structure(label), {})[int(n)] = label
    return {s: dict(sorted(p.items())) for s, p in out.items()}


def budgets(points: Points) -> list[int]:
    """Every N of the points, ascending."""
    return sorted({n for p in points.values() for n in p})


def n_list(ns: Sequence[int]) -> str:
    """``20, 200 and 1,000``."""
    texts = [f"{n:,}" for n in ns]
    return texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} and {texts[-1]}"


def budget_caption(runs: Sequence[Run], sequence: str, bn: str) -> str | None:
    """The figure's caption; None unless the EWC methods ran at two N or more."""
    points = budget_points(runs, sequence, bn)
    ns = budgets(points)
    if len(ns) < 2:
        return None
    counts = sorted(
        len(values_of(selected(runs, sequence, bn, label)))
        for p in points.values()
        for label in p.values()
    )
    seeds = f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}–{counts[-1]}"
    text = (
        f"Row budget, {sequence}, bn = {bn}: test average accuracy (left) and forgetting "
        f"(right, lower is better) against N, the training inputs per task each curvature was "
        f"fitted on (log scale; N = {n_list(ns)}), one line per structure, at each N its own "
        f"chosen λ; marker and bar = the mean with its {CI_TEXT}, faint dots = the test seeds "
        f"(n = {seeds} per point); markers shifted sideways a little so that none hides another."
    )
    partial = [f"{s} (N = {n_list(list(p))})" for s, p in points.items() if len(p) < len(ns)]
    if partial:
        text += f" Not at every N: {'; '.join(partial)}."
    return text


def pair_tests(
    runs: Sequence[Run], sequence: str, bn: str, label: str, ref: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``cells.paired`` of test average accuracy and forgetting, ``label`` − ``ref``."""
    mine, other = selected(runs, sequence, bn, label), selected(runs, sequence, bn, ref)
    return paired(mine, other, "test_avg"), paired(mine, other, "forgetting")


def _pair_sentence(
    runs: Sequence[Run],
    sequence: str,
    bn: str,
    a: tuple[str, dict[int, str]],
    b: tuple[str, dict[int, str]],
) -> str:
    """B − A at each N both ran at (module docstring); ``a``, ``b``: (structure, its points)."""
    acc, forgetting = [], []
    for n in sorted(set(a[1]) & set(b[1])):
        t_acc, t_forg = pair_tests(runs, sequence, bn, b[1][n], a[1][n])
        acc.append(f"at N = {n:,}, {interval(t_acc)} ({t_acc['n']} pairs)")
        forgetting.append(f"at N = {n:,}, {interval(t_forg)}")
    return (
        f"{b[0]} − {a[0]}, paired over the test seeds both finished (mean difference with its "
        f"{CI_TEXT}), in test average accuracy: {'; '.join(acc)}; in forgetting (lower is "
        f"better): {'; '.join(forgetting)}."
    )


def pair_order(names: Sequence[str]) -> list[str]:
    """The diagonal reference first, the full Fisher last, the others in the given order."""

    def key(name: str) -> int:
        return 0 if is_reference(name) else 2 if family(name) == "full" else 1

    return sorted(names, key=key)


def budget_sentences(runs: Sequence[Run], sequence: str, bn: str) -> list[str]:
    """One sentence per pair of structures that ran at two or more common N (module docstring)."""
    points = budget_points(runs, sequence, bn)
    names = pair_order(list(points))
    return [
        _pair_sentence(runs, sequence, bn, (a, points[a]), (b, points[b]))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if len(set(points[a]) & set(points[b])) >= 2
    ]


# -- drawing -----------------------------------------------------------------------------------


def _draw_structure(
    ax: Any, chosen: dict[int, list[Run]], attr: str, name: str, shift: float
) -> None:
    """One structure on one panel: seeds as faint dots, means with intervals, a line through.

    ``chosen``: N -> the structure's selected runs at N; ``shift``: the factor its markers are
    moved by along the log axis.
    """
    c = colour(name)
    xs, means = [], []
    for n, runs in chosen.items():
        values = values_of(runs, attr)
        mean, half = mean_ci(values)
        if mean is None:
            continue
        x = n * shift
        dots = [x * 10 ** float(d) for d in spread(len(values), SEED_WIDTH)]
        ax.scatter(dots, values, s=DOT_SIZE, color=c, alpha=SEED_ALPHA, linewidths=0, zorder=2)
        ax.errorbar(x, mean, yerr=half or 0.0, fmt=marker(name), ms=6, capsize=3, color=c, zorder=3)
        xs.append(x)
        means.append(mean)
    ax.plot(xs, means, ls=line_style(name), lw=1.4, color=c, label=name, zorder=3)


def plot_budget(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """Test average accuracy and forgetting against N, one line per structure (two panels)."""
    from matplotlib.ticker import NullFormatter

    points = budget_points(runs, sequence, bn)
    ns = budgets(points)
    fig = new_figure(10.5, 4.4)
    axes = fig.subplots(1, 2)
    for ax, (attr, name) in zip(axes, PANELS, strict=True):
        for i, (struct, point) in enumerate(points.items()):
            chosen = {n: selected(runs, sequence, bn, label) for n, label in point.items()}
            shift = 10 ** (NUDGE * (i - (len(points) - 1) / 2))
            _draw_structure(ax, chosen, attr, struct, shift)
        ax.set_xscale("log")
        ax.set_xticks(ns, [f"{n:,}" for n in ns])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(ns[0] / 1.8, ns[-1] * 1.8)
        ax.set_xlabel("N: training inputs per task the curvature was fitted on (log)")
        ax.set_ylabel(name)
        ax.grid(alpha=GRID_ALPHA)
    method_legend(fig, axes)
    fig.suptitle(
        f"Row budget: {sequence}, bn = {bn}\n(chosen λ per N; marker and bar: mean with "
        f"95% Student-t CI; dots: seeds)",
        fontsize=10,
    )
    save_figure(fig, path)
