"""How every report writes numbers, tables and figures: one formatter per kind of value.

- Numbers: accuracies and other fixed-decimal values, mean ± CI, signed differences, p-values,
  lambdas, plain numbers, ratios; bytes (the one byte formatter of the benchmark), seconds,
  milliseconds, durations.
- Tables: Markdown tables and cells, CSV cells.
- Figures: a new matplotlib figure on the Agg canvas, and saving it (matplotlib is imported
  only by these two helpers). Every colour of every figure comes from ``palette``.
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
