"""How long ``make reproduce`` took end to end, measured by the command that ends it.

``make reproduce`` notes the time it starts (``date +%s`` when make reads the Makefile, before
the install and the data check) and passes it to its last step, ``report --started``, which
stores the interval in ``<results>/reproduce.json`` and states it in REPORT.md's provenance.
Later reports built from the same records (``make report``) state the stored measurement, with
the date and commit it was made at; a run of ``make reproduce`` that reuses records (a resumed
or repeated sweep) measures only what that invocation did, and the sweep's invocations line says
how the records were made.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any

from . import provenance
from .records import write_json_atomic

FILE = "reproduce.json"


def check_started(started: float, now: float | None = None) -> float:
    """``started`` as seconds since the epoch, refused unless finite and not in the future.

    Raises:
        ValueError: not a finite number of seconds, or later than now.
    """
    now = time.time() if now is None else now
    if not math.isfinite(started) or started <= 0:
        raise ValueError(f"--started must be seconds since the epoch (date +%s), got {started}")
    if started > now + 1:
        raise ValueError(f"--started {started:.0f} lies in the future (now is {now:.0f})")
    return started


def record(results: Path, started: float, now: float | None = None) -> dict[str, Any]:
    """Store the interval from ``started`` to now in ``<results>/reproduce.json``; return it."""
    now = time.time() if now is None else now
    started = check_started(started, now)
    machine = provenance.machine()
    data = {
        "started": _iso(started),
        "finished": _iso(now),
        "seconds": now - started,
        "git_sha": provenance.git_sha(),
        "cpu": machine.get("cpu"),
        "cores": machine.get("cores"),
    }
    write_json_atomic(Path(results) / FILE, data)
    return data


def load(results: Path) -> dict[str, Any] | None:
    """The stored end-to-end measurement of ``results`` (None: never measured, or unreadable)."""
    path = Path(results) / FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("seconds"), int | float) else None


def _iso(epoch: float) -> str:
    """UTC ISO 8601 to the second."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")
