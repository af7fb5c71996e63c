"""Runs on a Dask cluster (``--executor dask``): one machine, a multi-GPU box or a SLURM cluster.

A sweep's runs are independent, so a Dask ``Client.get_executor()`` (a ``concurrent.futures``
executor) takes the local process pool's place in ``execution.run_configs``, unchanged:

- ``--scheduler local:N`` starts a ``LocalCluster`` of N single-threaded worker processes for the
  sweep's duration; ``--scheduler tcp://HOST:PORT`` (or ``$DASK_SCHEDULER_ADDRESS``) connects to
  a running scheduler (``dask scheduler`` + ``dask worker``, ``dask-cuda``, ``dask-jobqueue``),
  whose long-lived workers pay start-up and queue latency once, not per run. Without either:
  a ``LocalCluster`` of ``--jobs`` workers.
- **The driver owns the store.** A worker receives a run's config (plain data), loads the data
  from the data root it is given (resolved on the worker), trains, and returns the record as a
  plain dict; the driver writes it atomically. No shared filesystem is needed, resume works as
  with the pool, and killing the driver loses only the runs in flight.
- **Preflight on the workers**: before any run, every worker checks the data and the device of
  every run (``preflight.check_data``/``check_devices``); a problem is one line naming the worker.
  The driver checks only what is its own (folders, memory budgets).
- **Deaths**: a worker that dies (killed, out of memory, preempted) drops its connection; the
  scheduler notices (at once for a dead process, after ``distributed.scheduler.worker-ttl`` for a
  vanished machine) and runs its task again on another worker. After
  ``distributed.scheduler.allowed-failures`` + 1 deaths under it, the run's future raises
  ``KilledWorker``, which the driver records as a failed run (``failure = "environment"``, healed
  on resume) naming the last worker. The ``LocalCluster`` started here allows
  ``execution.MAX_ATTEMPTS`` deaths, as the process pool does, and gives each worker one run at a
  time (``worker-saturation`` 1), so a death is blamed only on the run that was on the worker.
- **Threads and devices**: each run sets its worker's torch threads (``--threads``, default 1);
  runs are serialised within a worker process (runs seed torch's global generator). With
  ``--device cuda`` each run asks for ``resources={"GPU": 1}``, so workers must offer it
  (``dask worker ... --resources GPU=1``, one worker per GPU).

Every record made here carries ``provenance["worker"]`` (the worker's address); the sweep's
summary names the workers that ran failed runs. Importing this module does not import Dask.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from . import provenance
from .config import RunConfig
from .errors import UserError
from .execution import MAX_ATTEMPTS, Pool, failed_record, resolve_jobs
from .preflight import (
    PreflightError,
    check_data,
    check_devices,
    check_folders,
    check_memory,
    preflight,
)

EXECUTORS = ("process", "dask")
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
SCHEDULER_FORMS = (
    "tcp://HOST:PORT or tls://HOST:PORT (a running Dask scheduler), or local:N (a LocalCluster "
    "of N single-threaded workers started for the sweep)"
)
INSTALL = "pip install -e '.[distributed]'"
DEFAULT_THREADS = 1
"""Torch threads per run under Dask unless ``--threads`` says otherwise."""
CONNECT_TIMEOUT_SECONDS = 10
WORKER_WAIT_SECONDS = 600
"""How long a sweep waits for a first worker to join a running scheduler."""
WORKERS_CACHE_SECONDS = 1.0
WORKER_DIED = (
    "the Dask workers running it died {deaths} time(s) (killed, out of memory, or preempted; "
    "the last was {worker}); a sweep retries it"
)
LOST = "its Dask task was cancelled (the connection to the scheduler was lost); a sweep retries it"
_ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_LOCAL = re.compile(r"local:(\d+)")


# -- choosing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scheduler:
    """Where Dask runs: a running scheduler's ``address``, or a ``LocalCluster`` of ``workers``."""

    address: str | None = None
    workers: int | None = None

    def __str__(self) -> str:
        return self.address or f"local:{self.workers}"


def parse_scheduler(text: str, what: str = "--scheduler") -> Scheduler:
    """``tcp://HOST:PORT``, ``tls://HOST:PORT`` or ``local:N``; anything else names the forms."""
    text = text.strip()
    local = _LOCAL.fullmatch(text)
    if local and int(local.group(1)) >= 1:
        return Scheduler(workers=int(local.group(1)))
    address = _ADDRESS.fullmatch(text)
    if address and 0 < int(address.group(3)) < 65536:
        return Scheduler(address=text)
    raise ValueError(f"{what} {text!r} is not valid; allowed forms: {SCHEDULER_FORMS}")


def require_distributed() -> None:
    """Raise a ``UserError`` saying how to install Dask when it is missing."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UserError(
            "--executor dask needs the optional package 'distributed', which is not installed: "
            f"{INSTALL}"
        ) from None


@dataclass(frozen=True)
class ExecutorChoice:
    """A sweep's executor, validated before anything runs: ``process`` or ``dask`` (where)."""

    kind: str = "process"
    jobs: int | str = 1
    scheduler: Scheduler | None = None

    def preflight(
        self,
        configs: Sequence[RunConfig],
        *,
        root: str | None,
        download: bool,
        folders: Mapping[str, Any],
    ) -> None:
        """The driver's preflight: everything, or under Dask what is the driver's own."""
        if self.kind == "process":
            preflight(configs, root=root, download=download, folders=folders)
            return
        problems = check_folders(folders) + check_memory(configs)
        if problems:
            raise PreflightError(problems)

    def open(
        self,
        threads: int | None,
        group_size: int,
        configs: Sequence[RunConfig],
        where: tuple[str | None, bool],
    ) -> Pool | DaskPool:
        """The pool the runs go through; a Dask one has passed its workers' preflight."""
        if self.kind == "process":
            return Pool(resolve_jobs(self.jobs), threads, group_size)
        gpu = any(c.device.startswith("cuda") for c in configs)
        pool = DaskPool(self.scheduler or Scheduler(workers=1), threads, group_size, gpu)
        try:
            pool.check_workers(configs, *where)
        except BaseException:
            pool.close(kill=True)
            raise
        return pool


def executor_choice(
    executor: str = "process", scheduler: str | Scheduler | None = None, jobs: int | str = 1
) -> ExecutorChoice:
    """Validate ``--executor``/``--scheduler`` (one-line ``UserError``s; nothing starts here).

    Under Dask the scheduler is ``scheduler``, else ``$DASK_SCHEDULER_ADDRESS``, else
    ``local:<jobs>``.
    """
    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "process":
        if scheduler is not None:
            raise UserError("--scheduler is for --executor dask (the process pool uses --jobs)")
        return ExecutorChoice("process", jobs)
    require_distributed()
    if isinstance(scheduler, str):
        scheduler = parse_scheduler(scheduler)
    elif scheduler is None and os.environ.get(SCHEDULER_ENV):
        try:
            scheduler = parse_scheduler(os.environ[SCHEDULER_ENV], f"${SCHEDULER_ENV}")
        except ValueError as err:
            raise UserError(str(err)) from None
    return ExecutorChoice("dask", jobs, scheduler or Scheduler(workers=resolve_jobs(jobs)))


# -- on a worker ----------------------------------------------------------------------------------

_ONE_RUN_AT_A_TIME = threading.Lock()


def worker_address() -> str:
    """This Dask worker's address (``host:pid`` outside a worker)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def on_worker(settings: dict[str, Any], fn: Callable[..., list[dict]], *args: Any) -> list[dict]:
    """Run ``fn(*args)`` (``execution.execute_unit``) on this worker; stamp the records.

    ``settings``: ``threads`` (torch threads), ``git_sha`` (the driver's pinned SHA) and
    ``command`` (the driver's command line), so a record says what made it wherever it ran.
    """
    with _ONE_RUN_AT_A_TIME:
        torch.set_num_threads(settings["threads"])
        if settings.get("git_sha"):
            os.environ[provenance.PIN] = settings["git_sha"]
        records = fn(*args)
    where = worker_address()
    for record in records:
        stamp = record.setdefault("provenance", {})
        stamp["worker"] = where
        if "command" in stamp:
            stamp["command"] = settings["command"]
        if record.get("status") == "failed" and record.get("failure") == "environment":
            record["message"] = f"on worker {where}: {record.get('message')}"
    return records


def check_worker(
    configs: list[dict[str, Any]], root: str | None, download: bool
) -> tuple[str, list[str]]:
    """A worker's preflight (``client.run``): its host, its problems with the data and devices."""
    cfgs = [RunConfig.from_dict(c) for c in configs]
    return socket.gethostname(), check_devices(cfgs) + check_data(cfgs, root, download)


def _worker_problems(outcome: Any) -> list[str]:
    """``check_worker``'s outcome on one worker as problem lines (an exception is one)."""
    if isinstance(outcome, BaseException):
        return [f"its preflight raised {type(outcome).__name__}: {outcome}"]
    host, problems = outcome
    return [f"(host {host}) {p}" for p in problems]


# -- the pool -------------------------------------------------------------------------------------


def _settle(outer: Future, configs: list[dict[str, Any]], inner: Future) -> None:
    """Pass a Dask outcome on; a run Dask gave up on (``KilledWorker``) becomes a failed record."""
    from distributed.scheduler import KilledWorker

    if inner.cancelled():
        outer.set_result(_failed(configs, LOST, None))
        return
    err = inner.exception()
    if err is None:
        outer.set_result(inner.result())
    elif isinstance(err, KilledWorker):
        worker = err.last_worker.address
        deaths = err.allowed_failures + 1
        outer.set_result(_failed(configs, WORKER_DIED.format(deaths=deaths, worker=worker), worker))
    else:
        outer.set_exception(err)


def _failed(configs: list[dict[str, Any]], message: str, worker: str | None) -> list[dict]:
    records = [failed_record(RunConfig.from_dict(c), message, "environment") for c in configs]
    for record in records:
        if worker:
            record.provenance["worker"] = worker
    return [r.to_dict() for r in records]


class DaskExecutor(Executor):
    """``Client.get_executor()`` for ``execute_unit``, records stamped with their worker.

    A run Dask gave up on (its workers kept dying) comes back as a failed record, not an error.
    """

    def __init__(self, client: Any, settings: dict[str, Any], resources: dict | None) -> None:
        extra = {"resources": resources} if resources else {}
        self.inner = client.get_executor(pure=False, **extra)
        self.settings = settings

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        """Submit ``fn(configs, ...)`` to the cluster; the future's result is a list of records."""
        outer: Future = Future()
        inner = self.inner.submit(on_worker, self.settings, fn, *args, **kwargs)
        inner.add_done_callback(partial(_settle, outer, args[0]))
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop submitting (the cluster is closed by ``DaskPool.close``)."""
        self.inner.shutdown(wait=wait)


class DaskPool:
    """``execution.Pool``'s interface on a Dask cluster (a started ``LocalCluster``, or running).

    Never broken by a death (Dask runs the task again), so ``rebuild`` does nothing.
    """

    inline = False

    def __init__(
        self, scheduler: Scheduler, threads: int | None, group_size: int, gpu: bool
    ) -> None:
        self.scheduler, self.group_size = scheduler, group_size
        self.threads = threads if threads is not None else DEFAULT_THREADS
        self.gpu = gpu
        self.cluster, self.client = connect(scheduler, gpu)
        self._workers = (0.0, 0)
        self.most_workers = 0
        settings = {
            "threads": self.threads,
            "git_sha": provenance.pin_git_sha(),
            "command": provenance.command_line(),
        }
        self.executor = DaskExecutor(self.client, settings, {"GPU": 1} if gpu else None)

    @property
    def jobs(self) -> int:
        """Workers connected now (at least 1): the runs that can be in flight at once."""
        when, count = self._workers
        if time.monotonic() - when > WORKERS_CACHE_SECONDS:
            count = len(self.client.nthreads())
            self._workers = (time.monotonic(), count)
            self.most_workers = max(self.most_workers, count)
        return max(1, count)

    def check_workers(self, configs: Sequence[RunConfig], root: str | None, download: bool) -> None:
        """Wait for a worker; check GPUs, then every worker's data and devices (preflight)."""
        wait_for_workers(self.client, self.scheduler)
        if self.gpu:
            require_gpu_workers(self.client, self.scheduler)
        dicts = [c.to_dict() for c in configs]
        addresses = sorted(self.client.nthreads())
        found: dict[str, Any] = {}
        for some in (addresses[:1], addresses[1:]):  # the first may download; then the others
            if some:
                run = self.client.run
                found.update(
                    run(check_worker, dicts, root, download, workers=some, on_error="return")
                )
        problems = [
            f"worker {address}: {problem}"
            for address, outcome in sorted(found.items())
            for problem in _worker_problems(outcome)
        ]
        if problems:
            raise PreflightError(problems)
        self.most_workers = max(self.most_workers, len(addresses))

    def rebuild(self) -> None:
        """Nothing to rebuild: Dask replaces dead workers and reruns their tasks."""

    def close(self, *, kill: bool = False) -> None:
        """Close the client; a ``LocalCluster`` started here is shut down with its workers.

        Either way at once (``kill`` changes nothing): a running scheduler forgets the tasks of a
        client that closed, and runs still on its workers finish unheard.
        """
        if self.cluster is None:
            self.client.close()
            return
        with contextlib.suppress(Exception):  # workers that are slow to exit say so: not news
            self.client.run(quiet_logs)
        with quiet():
            self.client.shutdown()
            self.cluster.close()

    def describe(self) -> dict[str, Any]:
        """``sweep.json``'s ``parallel``: the executor, scheduler and most workers seen at once."""
        return {
            "executor": "dask",
            "scheduler": str(self.scheduler),
            "jobs": self.most_workers,
            "workers": self.most_workers,
            "group_size": self.group_size,
            "threads_per_run": self.threads,
        }


def quiet_logs() -> None:
    """Silence Dask's loggers in this process (a worker being closed, or the driver closing)."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Within the block, Dask's loggers in this process are silent."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def connect(scheduler: Scheduler, gpu: bool = False) -> tuple[Any, Any]:
    """(cluster or None, client): a started ``LocalCluster``, or a client of a running scheduler."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler.address is None:
        config = {"distributed.scheduler.worker-saturation": 1.0}
        with dask.config.set(config):
            cluster = LocalCluster(
                n_workers=scheduler.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # no fixed port (8787 may be taken)
                scheduler_kwargs={"allowed_failures": MAX_ATTEMPTS - 1},
                resources={"GPU": 1} if gpu else None,
            )
        return cluster, Client(cluster)
    try:
        client = Client(scheduler.address, timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, TimeoutError) as err:
        raise UserError(
            f"cannot reach the Dask scheduler at {scheduler.address} "
            f"({type(err).__name__}: {err}); is it running (`dask scheduler`) and is the "
            "address right?"
        ) from None
    return None, client


def wait_for_workers(client: Any, scheduler: Scheduler) -> None:
    """Return once a worker is connected; a ``UserError`` after ``WORKER_WAIT_SECONDS``."""
    if client.nthreads():
        return
    print(f"waiting for a Dask worker to join {scheduler} ...", file=sys.stderr, flush=True)
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
    except TimeoutError:
        raise UserError(
            f"no Dask worker joined the scheduler at {scheduler} within {WORKER_WAIT_SECONDS} s: "
            f"start workers (`dask worker {scheduler} --nthreads 1`) or scale the cluster"
        ) from None


def require_gpu_workers(client: Any, scheduler: Scheduler) -> None:
    """A ``UserError`` unless some worker offers the ``GPU`` resource that cuda runs ask for."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values()):
        raise UserError(
            f"--device cuda asks each run for resources={{'GPU': 1}}, but no worker of {scheduler} "
            "offers it: start one worker per GPU with `--resources GPU=1` (or "
            "LocalCUDACluster(resources={'GPU': 1}))"
        )


# -- the summary ----------------------------------------------------------------------------------


def failure_workers(failed: Iterable[Mapping[str, Any]]) -> str | None:
    """``tcp://a (2), tcp://b (1)``: the workers that ran failed runs, most first (None: none)."""
    counts = Counter(f["worker"] for f in failed if f.get("worker"))
    if not counts:
        return None
    return ", ".join(f"{w} ({n})" for w, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])))
