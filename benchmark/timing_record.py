"""What a timing record means, shared by the code that writes it and the report that reads it.

``benchmark.costs.timing`` and ``benchmark.costs.compare`` measure and store;
``benchmark.report.timing`` renders timing.md from the stored record alone. Both sides need the
ratios of a timed row to its references and the package name of each optional library; they are
defined here, once, so that neither side imports the other.
"""

from __future__ import annotations

from typing import Any

LIBRARIES = {
    "backpack": "backpack-for-pytorch",
    "nngeometry": "nngeometry",
    "curvlinops": "curvlinops-for-pytorch",
}
"""Import name -> distribution name of the libraries timed beside ours (``costs.compare``)."""


def ratios(row: dict[str, Any], floor_s: float | None, naive_s: float | None) -> dict[str, Any]:
    """``x_floor`` (time / floor) and ``naive_over_time`` (naive / time) for a timed row."""
    t = row.get("median_s")
    if row.get("status") != "ok" or t is None:
        return {"x_floor": None, "naive_over_time": None}
    return {
        "x_floor": t / floor_s if floor_s else None,
        "naive_over_time": naive_s / t if naive_s and t > 0 else None,
    }
