"""Errors raised by the estimators, each saying what was wrong and what is allowed."""

from __future__ import annotations


def format_bytes(n: int) -> str:
    """Render a byte count for people: ``1536 -> '1.5 KiB (1,536 bytes)'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            shown = f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
            return f"{shown} ({n:,} bytes)"
        value /= 1024
    raise AssertionError("unreachable")


class FisherMemoryError(MemoryError):
    """A curvature representation would not fit in the memory budget.

    Attributes:
        needed: bytes the refused representation would need.
        budget: the memory budget in bytes.
    """

    def __init__(self, what: str, needed: int, budget: int, hint: str = "") -> None:
        self.needed = needed
        self.budget = budget
        message = (
            f"{what} would need {format_bytes(needed)}, over the memory budget of "
            f"{format_bytes(budget)}."
        )
        if hint:
            message += " " + hint
        super().__init__(message)
