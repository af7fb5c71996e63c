"""Running a sweep's runs: executors, workers that never outlive their driver, failures that heal.

Runs go through a ``concurrent.futures.Executor``: in this process for ``jobs = 1``, a local
spawn-based process pool for ``jobs > 1``, or a Dask cluster (``benchmark.distributed``).
Workers receive a run's config (plain data) and return its record as a plain dict; the driver
writes every record (atomically), so a worker never writes into the results folder. Runs are
submitted a few at a time and the progress bar advances as each one finishes, whatever the
executor.

Failures: a run that raises is recorded as ``failed`` with ``failure = "environment"`` when the
cause lies outside the run (missing or corrupt data, no device, out of memory, an OS error, a
worker process that died) and ``"run"`` otherwise (its own configuration, e.g. a curvature over
its memory budget, or a bug). A sweep retries environment failures by default and the others
only with ``retry_failed``. A worker that dies is replaced and its runs are tried again: a death
breaks every run in flight, so it is blamed on a run only when that run was alone in flight;
runs in flight together at a death are tried again one at a time, and a run whose worker dies
under it ``MAX_ATTEMPTS`` times is recorded as failed.

No orphans: workers ignore SIGINT (Ctrl-C is the driver's to handle), and each runs a thread
that ends the worker as soon as its parent is gone (the driver killed with SIGKILL included);
an interrupted driver kills its workers before it exits.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import estimators

from . import provenance
from .config import RunConfig
from .data import DataError
from .errors import DeviceError
from .methods import METHODS
from .records import RunRecord, load_record, record_path, write_record
from .selection import group_key

PARENT_POLL_SECONDS = 0.5
"""How often a worker checks that its driver is alive."""
ORPHAN_EXIT_STATUS = 70
MAX_ATTEMPTS = 2
"""Worker deaths blamed on one run (alone in flight) before a sweep records it as failed."""
WORKER_DIED = (
    "the worker process running it died (killed, or out of memory) {attempts} time(s); "
    "a sweep retries it"
)
_OOM = tuple(
    t for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if t
)


# -- executors -----------------------------------------------------------------------------------


class InlineExecutor(Executor):
    """Runs each submitted call at once, in this process (``jobs = 1``)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn`` now; return a finished future (KeyboardInterrupt propagates)."""
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:
            future.set_exception(err)
        return future


def _watch_parent(parent: int) -> None:
    """End this worker as soon as ``parent`` is no longer its parent (the driver died)."""
    while True:
        if os.getppid() != parent:
            os._exit(ORPHAN_EXIT_STATUS)
        time.sleep(PARENT_POLL_SECONDS)


def _init_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch").start()


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_jobs(jobs: int | str) -> int:
    """``auto`` -> one run per available core (measured the faster split, see the README)."""
    return available_cores() if jobs == "auto" else int(jobs)


def threads_per_run(jobs: int, threads: int | None = None) -> int:
    """Torch threads of each run: ``threads``, else the cores shared evenly among the jobs."""
    return threads if threads is not None else max(1, available_cores() // jobs)


def make_executor(jobs: int, threads: int | None = None) -> Executor:
    """In-process for one job; a spawn-based process pool for several, threads split evenly.

    In process, ``threads`` (when given) sets this process's torch threads; otherwise torch's
    default (``OMP_NUM_THREADS``) stays.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1:
        if threads is not None:
            torch.set_num_threads(threads)
        return InlineExecutor()
    threads = threads_per_run(jobs, threads)
    return ProcessPoolExecutor(
        jobs,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads, os.getpid()),
    )


def stop_executor(executor: Executor, *, kill: bool) -> None:
    """Shut down; with ``kill``, cancel what is queued and end the worker processes now."""
    if not kill:
        executor.shutdown(wait=True)
        return
    procs = dict(getattr(executor, "_processes", None) or {})
    executor.shutdown(wait=False, cancel_futures=True)
    for proc in procs.values():
        if proc.is_alive():
            proc.kill()
    for proc in procs.values():
        try:
            proc.join(timeout=5)
        except KeyboardInterrupt:  # a second Ctrl-C (a terminal signals the whole group): the
            continue  # workers were killed above, and the first interrupt's message must surface


class Pool:
    """A sweep's executor: replaced when a worker dies, killed when the sweep is interrupted."""

    def __init__(self, jobs: int, threads: int | None = None, group_size: int = 1) -> None:
        self.jobs = jobs
        self.threads = threads
        self.group_size = group_size
        self.executor = make_executor(jobs, threads)

    @property
    def inline(self) -> bool:
        """Whether runs execute in this process."""
        return isinstance(self.executor, InlineExecutor)

    def rebuild(self) -> None:
        """A fresh executor after a worker died (the old one is broken)."""
        stop_executor(self.executor, kill=True)
        self.executor = make_executor(self.jobs, self.threads)

    def close(self, *, kill: bool = False) -> None:
        """Shut down (``kill``: at once, ending the workers)."""
        stop_executor(self.executor, kill=kill)

    def describe(self) -> dict[str, Any]:
        """``sweep.json``'s ``parallel``: runs at once, runs per unit, torch threads per run."""
        threads = (
            torch.get_num_threads() if self.inline else threads_per_run(self.jobs, self.threads)
        )
        return {"jobs": self.jobs, "group_size": self.group_size, "threads_per_run": threads}


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only), so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- one run -------------------------------------------------------------------------------------


def classify(err: BaseException) -> str:
    """``environment`` for causes outside the run (retried on resume), else ``run``."""
    if isinstance(err, estimators.FisherMemoryError):
        return "run"  # its memory budget is part of the run's config
    if isinstance(err, (DataError, DeviceError, MemoryError, OSError, *_OOM)):
        return "environment"
    return "run"


def failed_record(config: RunConfig, message: str, failure: str) -> RunRecord:
    """The record of a run that failed before it produced anything."""
    record = RunRecord(
        run_id=config.run_id,
        config=config.to_dict(),
        status="failed",
        message=message,
        failure=failure,
    )
    record.provenance = {
        **provenance.machine(config.device),
        "git_sha": provenance.git_sha(),
        "finished": provenance.now(),
    }
    return record


def execute(
    config: dict[str, Any], root: str | None, download: bool, progress: bool = False
) -> dict[str, Any]:
    """Run one config and return its record as a dict; an exception becomes a failed record."""
    from .harness import run  # imported here: workers import the harness once, lazily

    cfg = RunConfig.from_dict(config)
    try:
        record = run(cfg, root=root, download=download, progress=progress)
    except Exception as err:  # the sweep goes on; the record says why
        tail = "".join(traceback.format_exception_only(type(err), err)).strip()
        record = failed_record(cfg, " ".join(tail.split()), classify(err))
    return record.to_dict()


def execute_unit(
    configs: list[dict[str, Any]], root: str | None, download: bool, progress: bool = False
) -> list[dict[str, Any]]:
    """Run a unit of configs: alone, or as one group (``benchmark.grouped``); records as dicts.

    A group that cannot be trained together, or that fails, is run again one config at a time,
    so a failing run fails alone, never its group.
    """
    if len(configs) == 1:
        return [execute(configs[0], root, download, progress)]
    from .grouped import run_group  # imported here, as the harness is

    try:
        records = run_group([RunConfig.from_dict(c) for c in configs], root=root, download=download)
    except Exception:  # GroupError, or any failure: each run on its own says what went wrong
        return [execute(c, root, download, progress) for c in configs]
    return [r.to_dict() for r in records]


def pack(configs: list[RunConfig], group_size: int) -> list[tuple[RunConfig, ...]]:
    """Units of at most ``group_size`` configs that differ only in lambda and seed, in order.

    Joint runs stay alone (nothing to stack). With ``group_size`` 1, every config is its own unit.
    """
    if group_size <= 1:
        return [(c,) for c in configs]
    families: dict[str, list[RunConfig]] = {}
    for c in configs:
        key = c.run_id if METHODS[c.method].joint else group_key(c.to_dict())
        families.setdefault(key, []).append(c)
    return [
        tuple(members[i : i + group_size])
        for members in families.values()
        for i in range(0, len(members), group_size)
    ]


# -- many runs -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What ``run_configs`` did: statuses of the runs it ran, and how many it reused."""

    ran: Counter = field(default_factory=Counter)
    reused: int = 0


def plan(
    configs: list[RunConfig], results: Path, retry_failed: bool
) -> tuple[list[RunConfig], int]:
    """The configs to run now, and how many finished records are reused.

    A run is done when its record is ``ok`` or ``diverged``, or ``failed`` for a reason of its
    own (unless ``retry_failed``). Environment failures and unreadable records (quarantined)
    are run again.
    """
    todo, reused = [], 0
    for run_id, cfg in {c.run_id: c for c in configs}.items():
        record = load_record(record_path(results, run_id), results)
        if record is None or (
            record.status == "failed" and (retry_failed or record.retry_by_default)
        ):
            todo.append(cfg)
        else:
            reused += 1
    return todo, reused


def run_configs(
    configs: list[RunConfig],
    results: Path,
    pool: Pool,
    *,
    root: str | None = None,
    download: bool = False,
    retry_failed: bool = False,
    desc: str = "runs",
) -> Tally:
    """Run every config not done yet (see ``plan``); write each record as it arrives.

    Configs go in units (``pack``: groups of up to ``pool.group_size`` runs trained together).
    """
    todo, reused = plan(configs, results, retry_failed)
    runner = _Runner(pool, results, Tally(reused=reused), (root, download))
    runner.queue = list(reversed(pack(todo, pool.group_size)))  # pop(): the configs' order
    runner.bar = tqdm(total=len(todo), desc=desc, unit="run", disable=not todo, dynamic_ncols=True)
    try:
        while runner.queue or runner.in_flight:
            runner.fill()
            runner.collect()
    finally:
        runner.bar.close()
    return runner.tally


Unit = tuple[RunConfig, ...]


class _Runner:
    """The submission loop of ``run_configs``: a window of units in flight, deaths handled."""

    def __init__(self, pool: Pool, results: Path, tally: Tally, where: tuple) -> None:
        self.pool, self.results, self.tally, self.where = pool, results, tally, where
        self.queue: list[Unit] = []
        self.in_flight: dict[Future, Unit] = {}
        self.attempts: Counter = Counter()  # worker deaths blamed on each run
        self.suspects: set[str] = set()  # in flight with others when a worker died: run alone
        self.bar: tqdm = tqdm(disable=True)
        self.progress = pool.inline and sys.stderr.isatty()

    @property
    def window(self) -> int:
        """Units in flight at most: two per worker (read each time: Dask's workers come and go)."""
        return 1 if self.pool.inline else 2 * self.pool.jobs

    def fill(self) -> None:
        """Submit units until the window is full (a suspect runs alone)."""
        while self.queue and len(self.in_flight) < self.window:
            together = [*self.queue[-1], *(c for u in self.in_flight.values() for c in u)]
            if self.in_flight and any(c.run_id in self.suspects for c in together):
                return
            unit = self.queue.pop()
            _show(self.bar, self.tally, len(self.in_flight) + 1, _what(unit))
            dicts = [c.to_dict() for c in unit]
            future = self.pool.executor.submit(execute_unit, dicts, *self.where, self.progress)
            self.in_flight[future] = unit

    def collect(self) -> None:
        """Write the records of finished units; after a worker's death, a new pool and retries."""
        done, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
        alone = len(self.in_flight) == 1 and len(next(iter(self.in_flight.values()))) == 1
        died, retry = False, []
        for future in done:
            unit = self.in_flight.pop(future)
            if _died(future):
                died = True
                if alone:
                    self.attempts[unit[0].run_id] += 1
            records = _outcomes(future, unit, self.attempts[unit[0].run_id] if alone else 0)
            if records is None:  # its worker died: try again
                retry.append(unit)
                continue
            for record in records:
                write_record(self.results, record)
                self.tally.ran[record.status] += 1
            self.bar.update(len(records))
            _show(self.bar, self.tally, len(self.in_flight), "")
        if died:  # the pool is broken: a new one, and its other runs are tried again, alone
            retry += self.in_flight.values()
            singles = [(c,) for u in retry for c in u]
            if not alone:  # which of them killed the worker is unknown: each runs alone
                self.suspects.update(u[0].run_id for u in singles)
            self.queue += singles
            self.in_flight.clear()
            self.pool.rebuild()


def _what(unit: Unit) -> str:
    first = unit[0]
    return f"{first.sequence} {first.label}" + (f" x{len(unit)}" if len(unit) > 1 else "")


def _died(future: Future) -> bool:
    """Whether a finished future failed because its worker process died."""
    return isinstance(future.exception(), BrokenProcessPool)


def _outcomes(future: Future, unit: Unit, attempts: int) -> list[RunRecord] | None:
    """The records a finished unit stands for; None when its worker died and a try is left.

    ``attempts``: the worker deaths blamed on this (single-run) unit so far, this one included.
    """
    try:
        return [RunRecord.from_dict(d) for d in future.result()]
    except BrokenProcessPool:
        if len(unit) > 1 or attempts < MAX_ATTEMPTS:
            return None
        return [failed_record(unit[0], WORKER_DIED.format(attempts=attempts), "environment")]
    except Exception as err:  # e.g. a record or config that could not be sent between processes
        return [failed_record(c, f"{type(err).__name__}: {err}", "run") for c in unit]


def _show(bar: tqdm, tally: Tally, running: int, what: str) -> None:
    counts = ", ".join(f"{k} {tally.ran[k]}" for k in ("ok", "diverged", "failed") if tally.ran[k])
    text = "; ".join(p for p in (counts, f"running {running}" if running else "", what) if p)
    bar.set_postfix_str(text, refresh=True)


def phase_summary(configs: list[RunConfig], results: Path) -> dict[str, Any]:
    """Statuses of a phase's runs as recorded now, and its failed runs (id, label, why)."""
    counts: Counter = Counter({"ok": 0, "diverged": 0, "failed": 0})
    failed = []
    for run_id, cfg in {c.run_id: c for c in configs}.items():
        record = load_record(record_path(results, run_id), results)
        counts[record.status if record else "missing"] += 1
        if record is not None and record.status == "failed":
            failed.append(
                {
                    "run_id": run_id,
                    "what": f"{cfg.sequence} bn={cfg.bn} {cfg.label} "
                    f"lam={cfg.lam:g} seed={cfg.seed}",
                    "failure": record.failure or "unknown",
                    "message": record.message,
                    **({"worker": w} if (w := record.provenance.get("worker")) else {}),
                }
            )
    return {"runs": sum(counts.values()), **dict(counts), "failed_runs": failed}
