"""Run records: the one JSON file per run that everything downstream (selection, report) reads.

A record is written once, atomically (temporary file + ``os.replace``), to
``<results>/runs/<run_id>.json``; a run whose record exists is done and is skipped, except a run
that failed for a reason outside itself (``failure = "environment"``: missing or corrupt data, no
device, out of memory, a worker that died), which a sweep retries. Reports are rebuilt from
records alone.

A temporary file is named ``.<run_id>~<host>~<pid>~<random>.tmp``, so that start-up cleanup
removes only those of writers that are no longer alive. A record that cannot be read (truncated,
not JSON, wrong schema) is never deleted: ``load_record`` moves it to ``<results>/quarantine/``
with a ``.reason`` file beside it, and its run counts as not done.

Accuracy matrices: ``R[i][j]`` is the accuracy on task j after training on task i (row i = after
task i, column j = task j), on the validation split (``acc_val``) and on the test split
(``acc_test``). ``joint`` trains once on all tasks: its matrices have one row. Entries after a
divergence are ``None``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "ewc-bench/run/2"
READABLE_SCHEMAS = ("ewc-bench/run/1", SCHEMA)
"""Schema 1 lacks ``failure``; it reads with ``failure = None``."""
STATUSES = ("ok", "diverged", "failed")
FAILURES = ("environment", "run")
"""Why a run failed: outside the run (retried on resume) or caused by its own configuration."""
SETTINGS_ADDED_LATER: dict[str, Any] = {"model_options": {}, "diagnostics": False, "lr_grid": []}
"""Run settings added after records were first written, with the default older records had.

A record's config is completed with them when it is read (so old and new records of one run
group together), and a run id leaves them out while at that default (so old ids stay valid)."""
QUARANTINE = "quarantine"
OLD_TEMP_SECONDS = 3600
"""A temporary file without an owner in its name (older writers) counts as dead after this."""


@dataclass
class RunRecord:
    """Everything one run produced.

    Attributes:
        run_id: hash of the run's config (see ``config.RunConfig.run_id``).
        config: the run's config as a dict (``config.RunConfig.to_dict``).
        status: ``ok``, ``diverged`` (loss became NaN/inf; remaining entries None) or ``failed``
            (an error; ``message`` says which).
        message: why a run diverged or failed, else None.
        failure: for a failed run, ``environment`` (a cause outside the run: missing or corrupt
            data, no device, out of memory, a worker that died; a sweep retries it) or ``run``
            (the run's own configuration or code; retried only with ``--retry-failed``).
        tasks: task names in training order.
        acc_val: validation accuracy matrix (see module docstring).
        acc_test: test accuracy matrix.
        train_seconds: per task, wall time of training.
        estimate_seconds: per task, wall time of fitting the curvature (0 without one).
        eval_seconds: per task, wall time of evaluating every task.
        curvature_bytes: per task, bytes of the curvature fitted after it (0 without one).
        curvature_trace: per task, tr(F) of the curvature fitted after it (None without one;
            ``lam * tr(F)`` puts the penalty strengths of different structures on one axis).
        representations: per task, the representation of that curvature
            (``Curvature.summary``: ``diag``, ``kfac``, ``full-dense``, ``full-factor 200 rows``,
            ...), None without one; empty in records made before it was recorded.
        step_ms: per task, median time of one plain training step (forward, loss, backward,
            optimizer step) measured after the task; None where not measured.
        penalty_ms: per task, median extra time per step that the penalty in force during that
            task costs (its closed-form gradient, added after the loss's backward); None
            without a penalty.
        train_loss: per task, mean training loss (cross-entropy, without penalty) of the last epoch.
        peak_rss_mb: peak resident memory of the process during the run (MiB), None if unknown.
        total_seconds: wall time of the whole run.
        provenance: git SHA, versions, hardware, device, command, start and end time.
        diagnostics: with the run setting ``diagnostics`` on, what explains stability and
            plasticity after the last task (``benchmark.diagnostics.measure``): ``plasticity``
            and ``stability`` (last row of ``acc_test``), and per old task (keys ``"0"``,
            ``"1"``, ...) the drift's exact and fitted Fisher quadratics per layer and in total,
            the hidden features' relative drift, and the accuracy and margin with the task's
            output layer put back; JSON numbers keyed by task index and layer (module) name.
            None otherwise: setting off, a run that diverged, a joint run, and records made
            before the field existed (they read with None).
    """

    run_id: str
    config: dict[str, Any]
    status: str = "ok"
    message: str | None = None
    failure: str | None = None
    tasks: list[str] = field(default_factory=list)
    acc_val: list[list[float | None]] = field(default_factory=list)
    acc_test: list[list[float | None]] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    estimate_seconds: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)
    curvature_bytes: list[int] = field(default_factory=list)
    representations: list[str | None] = field(default_factory=list)
    curvature_trace: list[float | None] = field(default_factory=list)
    step_ms: list[float | None] = field(default_factory=list)
    penalty_ms: list[float | None] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    peak_rss_mb: float | None = None
    total_seconds: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] | None = None
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN/inf become None)."""
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Parse a record (schema 1 or 2); anything malformed raises ValueError saying what."""
        if not isinstance(data, dict):
            raise ValueError(f"a record is a JSON object, got {type(data).__name__}")
        if data.get("schema") not in READABLE_SCHEMAS:
            raise ValueError(
                f"unsupported record schema {data.get('schema')!r}, expected one of "
                f"{', '.join(READABLE_SCHEMAS)}"
            )
        if data.get("status") not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}, got {data.get('status')!r}")
        if not isinstance(data.get("run_id"), str) or not isinstance(data.get("config"), dict):
            raise ValueError("a record needs a run_id (string) and a config (object)")
        if data.get("failure") not in (None, *FAILURES):
            raise ValueError(f"record failure must be one of {FAILURES}, got {data['failure']!r}")
        for name in ("acc_val", "acc_test"):
            matrix = data.get(name, [])
            if not isinstance(matrix, list) or not all(isinstance(row, list) for row in matrix):
                raise ValueError(f"{name} must be a list of rows")
        if not isinstance(data.get("diagnostics"), (dict, type(None))):
            raise ValueError("diagnostics must be an object (or null)")
        known = {f for f in cls.__dataclass_fields__}
        config = {**copy.deepcopy(SETTINGS_ADDED_LATER), **data["config"]}
        fields = {k: v for k, v in data.items() if k in known}
        return cls(**{**fields, "config": config, "schema": SCHEMA})

    @property
    def retry_by_default(self) -> bool:
        """A failure from outside the run (or of unknown cause, schema 1): a sweep retries it."""
        return self.status == "failed" and self.failure != "run"


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


def _temp_prefix(run_id: str) -> str:
    return f".{run_id}~{socket.gethostname()}~{os.getpid()}~"


def write_record(results: Path, record: RunRecord) -> Path:
    """Write atomically: a reader never sees a half-written file."""
    path = record_path(results, record.run_id)
    return write_json_atomic(path, record.to_dict(), _temp_prefix(record.run_id))


def write_json_atomic(path: Path, data: Any, prefix: str | None = None) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = prefix or _temp_prefix(path.stem)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def quarantine(path: Path, results: Path, reason: str) -> Path | None:
    """Move ``path`` to ``<results>/quarantine/`` with ``<name>.reason`` beside it; never delete.

    Returns the new path, or None when the file could not be moved (a read-only folder: it stays
    where it is and is skipped). Says what it did on stderr, in one line.
    """
    folder = Path(results) / QUARANTINE
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target, n = folder / f"{path.name}.{stamp}", 1
    while target.exists():  # the same file quarantined twice within a second: keep both
        target, n = folder / f"{path.name}.{stamp}.{n}", n + 1
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        target.with_name(target.name + ".reason").write_text(reason + "\n")
    except OSError as err:
        print(
            f"warning: {path} is unreadable ({reason}) and could not be moved aside "
            f"({err.strerror}); it is skipped",
            file=sys.stderr,
        )
        return None
    print(f"warning: {path} is unreadable ({reason}); moved to {target}", file=sys.stderr)
    return target


def load_record(path: Path, results: Path | None = None) -> RunRecord | None:
    """The record at ``path``; None when absent or unreadable (then quarantined, see module)."""
    try:
        with path.open() as f:
            record = RunRecord.from_dict(json.load(f))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        quarantine(path, Path(results) if results else path.parent.parent, _reason(err))
        return None
    if record.run_id != path.stem:
        quarantine(
            path,
            Path(results) if results else path.parent.parent,
            f"its run_id {record.run_id!r} does not match its file name",
        )
        return None
    return record


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split())
    kind = "not valid JSON" if isinstance(err, json.JSONDecodeError) else "not a valid run record"
    return f"{kind}: {text}"


def read_records(results: Path) -> Iterator[RunRecord]:
    """Every readable record under ``results/runs``, sorted by id; unreadable ones quarantined.

    Temporary files are ignored.
    """
    folder = Path(results) / "runs"
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        record = load_record(path, results)
        if record is not None:
            yield record


def clean_partial(results: Path) -> int:
    """Remove temporary files of writers that are no longer alive; returns how many.

    A file names its writer (host and pid). Files of this host whose pid is gone are removed;
    other hosts' files are left alone; files in the older format without an owner are removed
    once older than ``OLD_TEMP_SECONDS``.
    """
    folder = Path(results) / "runs"
    host, removed = socket.gethostname(), 0
    for path in folder.glob(".*.tmp") if folder.is_dir() else []:
        parts = path.name.split("~")
        if len(parts) == 4:
            if parts[1] != host or not parts[2].isdigit() or pid_alive(int(parts[2])):
                continue
        else:
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime < OLD_TEMP_SECONDS:
                    continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
