"""Run records: the one JSON file per run that everything downstream (selection, report) reads.

A record is written once, atomically (temporary file + ``os.replace``), to
``<results>/runs/<run_id>.json``; a run whose record exists is done and is skipped. Reports are
rebuilt from records alone.

Accuracy matrices: ``R[i][j]`` is the accuracy on task j after training on task i (row i = after
task i, column j = task j), on the validation split (``acc_val``) and on the test split
(``acc_test``). ``joint`` trains once on all tasks: its matrices have one row. Entries after a
divergence are ``None``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "ewc-bench/run/1"
STATUSES = ("ok", "diverged", "failed")


@dataclass
class RunRecord:
    """Everything one run produced.

    Attributes:
        run_id: hash of the run's config (see ``config.RunConfig.run_id``).
        config: the run's config as a dict (``config.RunConfig.to_dict``).
        status: ``ok``, ``diverged`` (loss became NaN/inf; remaining entries None) or ``failed``
            (an error; ``message`` says which).
        message: why a run diverged or failed, else None.
        tasks: task names in training order.
        acc_val: validation accuracy matrix (see module docstring).
        acc_test: test accuracy matrix.
        train_seconds: per task, wall time of training.
        estimate_seconds: per task, wall time of fitting the curvature (0 without one).
        eval_seconds: per task, wall time of evaluating every task.
        curvature_bytes: per task, bytes of the curvature fitted after it (0 without one).
        step_ms: per task, median time of one plain training step (forward, loss, backward,
            optimizer step) measured after the task; None where not measured.
        penalty_ms: per task, median extra time per step that the penalty in force during that
            task costs (quadratic + its backward); None without a penalty.
        train_loss: per task, mean training loss (cross-entropy, without penalty) of the last epoch.
        peak_rss_mb: peak resident memory of the process during the run (MiB), None if unknown.
        total_seconds: wall time of the whole run.
        provenance: git SHA, versions, hardware, device, command, start and end time.
    """

    run_id: str
    config: dict[str, Any]
    status: str = "ok"
    message: str | None = None
    tasks: list[str] = field(default_factory=list)
    acc_val: list[list[float | None]] = field(default_factory=list)
    acc_test: list[list[float | None]] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    estimate_seconds: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)
    curvature_bytes: list[int] = field(default_factory=list)
    step_ms: list[float | None] = field(default_factory=list)
    penalty_ms: list[float | None] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    peak_rss_mb: float | None = None
    total_seconds: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN/inf become None)."""
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Parse a record; unknown schema or status raises ValueError."""
        if data.get("schema") != SCHEMA:
            raise ValueError(
                f"unsupported record schema {data.get('schema')!r}, expected {SCHEMA!r}"
            )
        if data.get("status") not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}, got {data.get('status')!r}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def record_path(results: Path, run_id: str) -> Path:
    """Where the record of ``run_id`` lives."""
    return Path(results) / "runs" / f"{run_id}.json"


def write_record(results: Path, record: RunRecord) -> Path:
    """Write atomically: a reader never sees a half-written file."""
    path = record_path(results, record.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{record.run_id}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record.to_dict(), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_records(results: Path) -> Iterator[RunRecord]:
    """Every complete record under ``results/runs`` (temporary files are ignored), sorted by id."""
    folder = Path(results) / "runs"
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            with path.open() as f:
                yield RunRecord.from_dict(json.load(f))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a valid run record: {err}") from None
