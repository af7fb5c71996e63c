"""Sweeps on a Dask cluster (``--executor dask``): the same records, deaths, resume, bad input.

The cluster of the fault tests is started as the README's recipe starts one (``dask scheduler``,
then ``dask worker ADDRESS --nworkers 2 --nthreads 1``), once for the module; the equality test
starts its own with ``--scheduler local:2``. Synthetic data only, runs of about a second.
Without the optional ``distributed`` package the module is skipped, saying so; under CI=true it
fails instead (the dev extra installs it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest

try:
    from distributed import Client, get_task_stream
    from distributed.scheduler import KilledWorker
except ImportError:  # pragma: no cover - depends on the install
    if os.environ.get("CI") == "true":
        raise ImportError(
            "tests/test_dask.py needs 'distributed' under CI: pip install -e '.[dev]'"
        ) from None
    pytest.skip(
        "distributed is not installed: pip install -e '.[distributed]'", allow_module_level=True
    )

from benchmark import distributed, execution, provenance
from benchmark.config import RunConfig
from benchmark.records import read_records
from benchmark.sweep import load_experiment, parse_experiment, run_sweep, summary_lines
from tests.fakedata import write_fake_root
from tests.test_first_run import (
    FIRST,
    _wait_for,
    alive,
    assert_one_line_errors,
    main,
    record_files,
    snapshot,
    write_experiment,
)
from tests.test_sweep import TINY

REPO = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")

TIMINGS = (
    "train_seconds",
    "estimate_seconds",
    "eval_seconds",
    "step_ms",
    "penalty_ms",
    "total_seconds",
    "peak_rss_mb",
)
"""Wall-clock measurements of a run and its process's peak memory: differ between any two runs."""
PROVENANCE = ("started", "finished", "command", "worker", "omp_num_threads")
"""Provenance that legitimately differs: clock times; the command (other flags); the Dask worker's
address (only under Dask); OMP_NUM_THREADS (a Dask nanny sets 1 in its workers' environment, pool
workers inherit the driver's). torch_threads, versions, git SHA and machine are compared."""

KILL = {
    "name": "kill",
    "seeds": [0, 1, 2],
    "selection_seeds": [7],
    "defaults": {"data": "synthetic", "epochs": 12, "fisher_samples": 32, "eval_limit": 100},
    "lambdas": {"default": [1.0, 10.0]},
    "studies": [
        {"sequence": "mnist-fmnist", "bn": ["freeze"], "methods": ["baseline", "ewc diag-exact"]}
    ],
}
"""2 selection runs (seed 7), then 6 test runs (2 groups x 3 seeds), about a second each."""
KILL_RECORDS = 8


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch):
    monkeypatch.delenv(provenance.PIN, raising=False)
    monkeypatch.delenv(distributed.SCHEDULER_ENV, raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two single-threaded workers, started as the README says."""
    logs = tmp_path_factory.mktemp("dask-logs")
    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    procs = []
    try:
        for name, args in (
            ("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"]),
            ("worker", ["worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"]),
        ):
            log = (logs / f"{name}.log").open("w")
            procs.append(subprocess.Popen([DASK, *args], cwd=REPO, stdout=log, stderr=log))
        client = Client(address, timeout=60)
        client.wait_for_workers(2, timeout=60)
        yield SimpleNamespace(address=address, client=client, logs=logs)
        client.close()
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _comparable(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in TIMINGS}
    out["provenance"] = {k: v for k, v in record["provenance"].items() if k not in PROVENANCE}
    return out


def _records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in record_files(results)}


def _count_writes(monkeypatch) -> list[str]:
    """Every record the driver writes, by run id."""
    written: list[str] = []
    real = execution.write_record

    def counting(results, record):
        written.append(record.run_id)
        return real(results, record)

    monkeypatch.setattr(execution, "write_record", counting)
    return written


# -- the same numbers -----------------------------------------------------------------------------


def test_dask_local_cluster_gives_the_process_pools_records(tmp_path, capsys):
    exp = write_experiment(tmp_path / "tiny.toml", TINY)
    pool, dask = tmp_path / "pool", tmp_path / "dask"
    sweep = ["sweep", "--experiment", exp]
    code, _, err = main(capsys, *sweep, "--results", pool, "--jobs", "2", "--threads", "1")
    assert code == 0, err
    args = ["--results", dask, "--executor", "dask", "--scheduler", "local:2"]
    code, _, err = main(capsys, *sweep, *args)
    assert code == 0, err
    assert "Traceback" not in err and "error" not in err.lower()

    by_pool, by_dask = _records(pool), _records(dask)
    assert len(by_pool) == 9 and sorted(by_pool) == sorted(by_dask)
    for run_id, record in by_pool.items():
        assert _comparable(by_dask[run_id]) == _comparable(record), run_id
        assert record["status"] == "ok" and record["provenance"]["torch_threads"] == 1
        assert by_dask[run_id]["provenance"]["worker"].startswith("tcp://")
        assert "worker" not in record["provenance"]
    parallel = json.loads((dask / "sweep.json").read_text())["parallel"]
    assert parallel == {
        "executor": "dask",
        "scheduler": "local:2",
        "jobs": 2,
        "workers": 2,
        "group_size": 1,
        "threads_per_run": 1,
    }
    assert json.loads((pool / "sweep.json").read_text())["parallel"] == {
        "jobs": 2,
        "group_size": 1,
        "threads_per_run": 1,
    }


# -- faults ---------------------------------------------------------------------------------------


def _kill_a_worker_mid_run(client: Client, killed: dict) -> None:
    """Wait until a run is on a worker, then SIGKILL that worker's process at once."""
    pids = client.run(os.getpid)  # asked first: the kill follows the sighting within a poll
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        busy = {w: keys for w, keys in client.processing().items() if keys and w in pids}
        if busy:
            address, keys = sorted(busy.items())[0]
            os.kill(pids[address], signal.SIGKILL)
            killed.update(address=address, keys=list(keys), pid=pids[address])
            return
        time.sleep(0.02)


def test_a_worker_killed_mid_run_loses_no_run(tmp_path, monkeypatch, cluster):
    written = _count_writes(monkeypatch)
    res = tmp_path / "results"
    killed: dict = {}
    killer = threading.Thread(target=_kill_a_worker_mid_run, args=(cluster.client, killed))
    with get_task_stream(client=cluster.client) as stream:
        killer.start()
        meta = run_sweep(parse_experiment(KILL), res, executor="dask", scheduler=cluster.address)
        killer.join(timeout=30)
    assert killed, "no run was seen on a worker"
    assert not alive(killed["pid"])
    # every run finished exactly once: one record each, written once, all ok
    assert sorted(written) == sorted(set(written)) and len(written) == KILL_RECORDS
    assert {r.status for r in read_records(res)} == {"ok"}
    assert len(record_files(res)) == KILL_RECORDS
    assert meta["ran_now"] == KILL_RECORDS and not summary_lines(meta)[2:]
    # the run on the killed worker was run again, to the end, by another worker
    finished = {(t["key"], t["worker"]) for t in stream.data if t.get("status") == "OK"}
    for key in killed["keys"]:
        assert any(k == key and w != killed["address"] for k, w in finished), key
    cluster.client.wait_for_workers(2, timeout=60)  # its nanny restarted it


def test_a_killed_driver_resumes_with_only_the_unfinished_runs(tmp_path, monkeypatch, cluster):
    exp = write_experiment(tmp_path / "kill.toml", KILL)
    res = tmp_path / "results"
    command = ["sweep", "--experiment", exp, "--results", res, "--executor", "dask"]
    env = {**os.environ, distributed.SCHEDULER_ENV: cluster.address}
    env.pop(provenance.PIN, None)
    driver = subprocess.Popen(
        [sys.executable, "-m", "benchmark", *map(str, command)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: record_files(res) or driver.poll() is not None, 120, "a first record")
        assert driver.poll() is None, "the sweep finished before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    kept = snapshot(res)
    time.sleep(1.5)
    assert snapshot(res) == kept  # its workers' runs in flight write nothing: the driver owns it
    assert 0 < len(kept) < KILL_RECORDS

    written = _count_writes(monkeypatch)
    monkeypatch.setenv(distributed.SCHEDULER_ENV, cluster.address)
    meta = run_sweep(load_experiment(str(exp)), res, executor="dask")
    assert sorted(written) == sorted(set(written))
    assert len(written) == KILL_RECORDS - len(kept) == meta["ran_now"]
    assert not {f"{r}.json" for r in written} & set(kept)  # only the unfinished runs
    now = snapshot(res)
    assert {k: now[k] for k in kept} == kept and len(now) == KILL_RECORDS
    assert {r.status for r in read_records(res)} == {"ok"}
    assert meta["parallel"]["scheduler"] == cluster.address


def test_workers_check_their_own_data_and_are_named(tmp_path, capsys, cluster):
    exp = write_experiment(tmp_path / "first.toml", {**FIRST, "seeds": [0]})
    empty = tmp_path / "empty"
    empty.mkdir()
    res = tmp_path / "results"
    code, _, err = main(
        capsys, "sweep", "--experiment", exp, "--results", res, "--data-root", empty,
        "--executor", "dask", "--scheduler", cluster.address,
    )  # fmt: skip
    lines = assert_one_line_errors(code, err, n=4)  # 2 workers x (MNIST, FashionMNIST)
    workers = sorted(cluster.client.nthreads())
    for line in lines:
        assert line.startswith("error: worker tcp://127.0.0.1:")
        assert "not found" in line and str(empty.resolve()) in line
    assert {line.split()[2].rstrip(":") for line in lines} == set(workers)
    assert record_files(res) == []

    fake = write_fake_root(tmp_path / "data")  # with the files, the same sweep runs
    code, _, err = main(
        capsys, "sweep", "--experiment", exp, "--results", res, "--data-root", fake,
        "--executor", "dask", "--scheduler", cluster.address,
    )  # fmt: skip
    assert code == 0, err
    assert len(record_files(res)) == 4


def test_cuda_runs_need_workers_with_a_gpu(tmp_path, capsys, cluster):
    exp = write_experiment(tmp_path / "tiny.toml", TINY)
    code, _, err = main(
        capsys, "sweep", "--experiment", exp, "--results", tmp_path / "res", "--device", "cuda",
        "--executor", "dask", "--scheduler", cluster.address,
    )  # fmt: skip
    (line,) = assert_one_line_errors(code, err)
    assert "resources={'GPU': 1}" in line and cluster.address in line
    assert "--resources GPU=1" in line
    assert record_files(tmp_path / "res") == []


# -- deaths Dask gave up on, and the summary ------------------------------------------------------


class _Done(Future):
    def __init__(self, error: BaseException | None = None, result=None) -> None:
        super().__init__()
        if error is None:
            self.set_result(result)
        else:
            self.set_exception(error)


def test_a_run_whose_workers_keep_dying_is_a_failed_record_that_heals():
    config = RunConfig(data="synthetic", method="baseline", estimator=None)
    last = SimpleNamespace(address="tcp://10.0.0.7:4321")
    outer: Future = Future()
    dying = KilledWorker(task="on_worker-1", last_worker=last, allowed_failures=1)
    distributed._settle(outer, [config.to_dict()], _Done(dying))
    (record,) = [execution.RunRecord.from_dict(d) for d in outer.result()]
    assert record.status == "failed" and record.failure == "environment"
    assert record.retry_by_default  # a resumed sweep runs it again
    assert "died 2 time(s)" in record.message and last.address in record.message
    assert record.provenance["worker"] == last.address

    ok = Future()
    distributed._settle(ok, [config.to_dict()], _Done(result=[{"a": 1}]))
    assert ok.result() == [{"a": 1}]
    other = Future()
    distributed._settle(other, [config.to_dict()], _Done(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        other.result()


def test_the_summary_names_the_workers_that_ran_failures():
    failed = [
        {"run_id": "a", "what": "x", "failure": "run", "message": "boom", "worker": "tcp://w1:1"},
        {
            "run_id": "b",
            "what": "y",
            "failure": "environment",
            "message": "m",
            "worker": "tcp://w2:2",
        },
        {"run_id": "c", "what": "z", "failure": "run", "message": "boom", "worker": "tcp://w2:2"},
    ]
    meta = {"counts": {"selection": {"failed_runs": failed}, "final": {}}}
    lines = summary_lines(meta)
    assert lines[-1] == "  workers that ran the failed runs: tcp://w2:2 (2), tcp://w1:1 (1)"
    assert distributed.failure_workers([{"worker": None}]) is None


def test_cuda_runs_ask_for_a_gpu_and_threads_are_explicit():
    seen = {}

    class FakeClient:
        def get_executor(self, **kwargs):
            seen.update(kwargs)
            return SimpleNamespace(submit=lambda *a, **k: _Done(result=[]))

    distributed.DaskExecutor(FakeClient(), {"threads": 1}, {"GPU": 1})
    assert seen == {"pure": False, "resources": {"GPU": 1}}
    seen.clear()
    distributed.DaskExecutor(FakeClient(), {"threads": 1}, None)
    assert seen == {"pure": False}


# -- bad input: one line ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["local:0", "local:two", "127.0.0.1:8786", "tcp://host", "x"])
def test_a_malformed_scheduler_names_the_allowed_forms(tmp_path, capsys, text):
    exp = write_experiment(tmp_path / "tiny.toml", TINY)
    code, _, err = main(
        capsys, "sweep", "--experiment", exp, "--executor", "dask", "--scheduler", text
    )
    (line,) = assert_one_line_errors(code, err)
    assert "tcp://HOST:PORT" in line and "local:N" in line and repr(text) in line


def test_scheduler_forms():
    assert distributed.parse_scheduler("local:3") == distributed.Scheduler(workers=3)
    for address in ("tcp://127.0.0.1:8786", "tls://node-1.cluster:8786", "tcp://[::1]:8786"):
        assert distributed.parse_scheduler(address).address == address
    assert str(distributed.parse_scheduler("local:2")) == "local:2"


def test_executor_choice_defaults(monkeypatch):
    choice = distributed.executor_choice("dask", None, 3)
    assert choice.scheduler == distributed.Scheduler(workers=3)
    monkeypatch.setenv(distributed.SCHEDULER_ENV, "tcp://10.1.2.3:8786")
    assert distributed.executor_choice("dask", None, 3).scheduler.address == "tcp://10.1.2.3:8786"
    monkeypatch.setenv(distributed.SCHEDULER_ENV, "nonsense")
    with pytest.raises(distributed.UserError, match=r"\$DASK_SCHEDULER_ADDRESS 'nonsense'"):
        distributed.executor_choice("dask", None, 1)
    with pytest.raises(distributed.UserError, match="--scheduler is for --executor dask"):
        distributed.executor_choice("process", "local:2", 1)


def test_dask_without_the_extra_says_how_to_install(tmp_path, capsys, monkeypatch):
    exp = write_experiment(tmp_path / "tiny.toml", TINY)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    res = tmp_path / "res"
    code, _, err = main(
        capsys, "sweep", "--experiment", exp, "--results", res, "--executor", "dask"
    )
    (line,) = assert_one_line_errors(code, err)
    assert "pip install -e '.[distributed]'" in line
    assert not res.exists()


def test_an_unreachable_scheduler_says_so_with_the_address(tmp_path, capsys, monkeypatch):
    exp = write_experiment(tmp_path / "tiny.toml", TINY)
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_SECONDS", 1)
    address = f"tcp://127.0.0.1:{_free_port()}"  # nobody listens there
    code, _, err = main(
        capsys, "sweep", "--experiment", exp, "--results", tmp_path / "res",
        "--executor", "dask", "--scheduler", address,
    )  # fmt: skip
    (line,) = assert_one_line_errors(code, err)
    assert f"cannot reach the Dask scheduler at {address}" in line
