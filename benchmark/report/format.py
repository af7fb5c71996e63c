"""How every report writes numbers, tables and figures: one formatter per kind of value.

- Numbers: accuracies and other fixed-decimal values, mean ± CI, signed differences, p-values,
  lambdas, plain numbers, ratios; bytes (the one byte formatter of the benchmark), seconds,
  milliseconds, durations.
- Tables: Markdown tables and cells, CSV cells.
- Figures: a new matplotlib figure on the Agg canvas, saving it, and one palette: each
  method or estimator label gets a fixed colour, its structure (diag, kfac, full) choosing the
  hue family and its label mode (exact, mc, empirical, batched, argmax) the shade, so that a
  label has the same colour in every figure of every report. matplotlib is imported only by
  the figure helpers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIDENCE = 0.95
"""Every interval in the reports is a 95% Student-t interval over seeds."""
MIB = 1024**2
BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB")
MISSING = "—"


# -- numbers -----------------------------------------------------------------------------------


def _missing(x: float | None) -> bool:
    return x is None or not math.isfinite(float(x))


def fmt_fixed(x: float | None, digits: int = 4) -> str:
    """``x`` with ``digits`` decimals (accuracies, errors); ``—`` for None or a non-finite value."""
    return MISSING if _missing(x) else f"{x:.{digits}f}"


def fmt_ci(mean: float | None, half: float | None, digits: int = 4) -> str:
    """``mean ± half`` (just the mean when the half-width is undefined), ``—`` without data."""
    if mean is None:
        return MISSING
    if half is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def fmt_signed(x: float | None, digits: int = 4) -> str:
    """A difference with an explicit sign (``+0.0000`` for zero, also for -0.0)."""
    if _missing(x):
        return MISSING
    return f"{x + 0.0:+.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value: three decimals, ``<0.001`` below."""
    if p is None:
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_lambda(lam: float) -> str:
    """``100000``, ``0.01``, ``1e-05``: no thousands separators (lambdas appear in lists)."""
    return f"{lam:.10g}"


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A plain number with three significant digits (no exponent below 1e6)."""
    if x is None:
        return MISSING
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_ratio(r: float | None) -> str:
    """A ratio with about three significant digits (``—`` when undefined)."""
    if r is None:
        return MISSING
    if r >= 100:
        return f"{r:,.0f}"
    if r >= 10:
        return f"{r:.1f}"
    if r >= 0.1:
        return f"{r:.2f}"
    return f"{r:.3f}"


def fmt_bytes(n: float | None, spec: str = ".1f") -> str:
    """Bytes in binary units: ``0 B``, ``351.6 KiB``, ``3.4 GiB``; ``—`` for None.

    Args:
        n: a byte count.
        spec: the format of the number from 1 KiB on: ``.1f`` (one decimal) by default, ``.3g``
            (three significant digits: ``352 KiB``, ``2.51 MiB``) in REPORT.md's cost table.
    """
    if n is None:
        return MISSING
    if n < 1024:
        return f"{n:.0f} B"
    value = float(n)
    for unit in BYTE_UNITS:
        value /= 1024
        if value < 1024 or unit == BYTE_UNITS[-1]:
            return f"{value:{spec}} {unit}"
    raise AssertionError("unreachable")


def fmt_mib(n: float | None) -> str:
    """Bytes as MiB with one decimal (a table column in MiB), ``n/a`` when unknown."""
    return "n/a" if n is None else f"{n / MIB:.1f}"


def fmt_seconds(x: float | None) -> str:
    """Seconds with three significant digits (ms below 1 s)."""
    if x is None:
        return MISSING
    if x == 0:
        return "0"
    if x < 1:
        return f"{x * 1000:.3g} ms"
    return f"{x:.3g} s"


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with about three significant digits (no unit)."""
    ms = seconds * 1000
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def fmt_duration(seconds: float | None) -> str:
    """``1 h 03 min 05 s``, ``4 min 10 s``, ``12.5 s``."""
    if seconds is None:
        return "not recorded"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {sec:02d} s" if h else f"{m} min {sec:02d} s"


# -- tables ------------------------------------------------------------------------------------


def md_cell(text: Any, limit: int = 160) -> str:
    """Text safe for one Markdown table cell (no pipes or newlines), shortened to ``limit``."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column (``l`` or ``r``, default ``l``)."""
    align = align[: len(header)].ljust(len(header), "l")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_number(x: float | None) -> str:
    """A number for runs.csv: rounded to 6 decimals, shortest round-trip text; empty for None."""
    if x is None:
        return ""
    return repr(round(float(x), 6) + 0.0)


def csv_cell(value: Any) -> str:
    """A value for study.csv: floats to 6 significant digits, empty for None."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# -- figures -----------------------------------------------------------------------------------


def new_figure(width: float, height: float, layout: str = "constrained") -> Any:
    """A matplotlib figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG at 110 dpi, without the matplotlib version in its metadata."""
    fig.savefig(path, dpi=110, metadata={"Software": None})


SHADES = {
    "diag": ("#08306b", "#2171b5", "#4292c6", "#6baed6", "#9ecae1"),
    "kfac": ("#00441b", "#238b45", "#41ab5d", "#74c476", "#a1d99b"),
    "ekfac": ("#004529", "#41ab5d", "#78c679", "#addd8e", "#d9f0a3"),
    "lowrank": ("#7f2704", "#d94801", "#f16913", "#fd8d3c", "#fdae6b"),
    "full": ("#3f007d", "#6a51a3", "#807dba", "#9e9ac8", "#bcbddc"),
}
"""Per structure, a hue family (blues, greens, yellow-greens, oranges, purples), dark to light."""
LABEL_MODES = ("exact", "mc", "empirical", "batched", "argmax")
"""The shade of a label mode within its structure's family (``SHADES`` order)."""
FIXED_COLOURS = {
    "floor": "#000000",
    "baseline": "#636363",
    "joint": "#d94801",
    "identity": "#8c510a",
    "l2": "#8c510a",
}
"""Labels outside the structure x label-mode grid (l2 is the identity curvature's penalty)."""
OTHER_COLOUR = "#969696"
ONLINE_PREFIX = "ewc-online "


def estimator_of(label: str) -> str:
    """The estimator (or method) of a label: ``ewc-online kfac-mc (gamma=0.9)`` -> ``kfac-mc``."""
    base = label.partition(" (")[0]
    for prefix in (ONLINE_PREFIX, "ewc "):
        if base.startswith(prefix):
            return base[len(prefix) :]
    return base


def colour(label: str) -> str:
    """The fixed colour of a method or estimator label, the same in every figure of every report.

    ``ewc <name>``, ``ewc-online <name>``, ``<name> (setting=...)`` and ``<name>`` share the
    colour of ``<name>``; ``line_style`` and ``marker`` tell the online mode apart.
    """
    name = estimator_of(label)
    if name in FIXED_COLOURS:
        return FIXED_COLOURS[name]
    structure, _, mode = name.partition("-")
    shades = SHADES.get(structure)
    if shades is None:
        return OTHER_COLOUR
    index = LABEL_MODES.index(mode) if mode in LABEL_MODES else len(shades) - 1
    return shades[min(index, len(shades) - 1)]


def line_style(label: str) -> str:
    """``--`` for the online mode and the floor (a reference), ``-`` otherwise."""
    return "--" if label.startswith(ONLINE_PREFIX) or label == "floor" else "-"


def marker(label: str) -> str:
    """``s`` for the online mode, ``o`` otherwise."""
    return "s" if label.startswith(ONLINE_PREFIX) else "o"
