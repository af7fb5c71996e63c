"""A first run that cannot go wrong (issue 9), as a new user meets it.

Each behaviour is checked where the user meets it: through ``python -m benchmark`` in a
subprocess when it is about the command line (exit status, one-line ``error:`` messages, no
traceback, signals and worker processes), in process (``cli.main``, ``run_sweep``, a patched
``harness.run``) elsewhere. Every check also counts the records under ``<results>/runs``: none
lost, none silently reused. Real datasets are never needed: ``tests.fakedata`` writes a tiny
learnable data root in torchvision's IDX layout.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from benchmark import cli, config, data, execution, harness, lock, preflight, provenance, records
from benchmark.config import RunConfig
from benchmark.records import RunRecord, read_records
from benchmark.sweep import parse_experiment, run_sweep
from tests.fakedata import write_dataset, write_fake_root
from tests.test_sweep import TINY

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
REAL_RUN = harness.run

FIRST = {
    "name": "first",
    "seeds": [0, 1],
    "selection_seeds": [7],
    "defaults": {
        "data": "real",
        "epochs": 1,
        "fisher_samples": 32,
        "train_limit": 300,
        "eval_limit": 100,
    },
    "lambdas": {"default": [1.0, 100.0]},
    "studies": [
        {"sequence": "mnist-fmnist", "bn": ["freeze"], "methods": ["baseline", "ewc diag-exact"]}
    ],
}
"""The new user's first experiment: 2 selection runs (seed 7), then test seeds 0-1 of both
groups (6 records)."""
FIRST_RECORDS = 6

ONE_RUN = {
    **FIRST,
    "name": "one",
    "seeds": [0],
    "defaults": {**FIRST["defaults"], "data": "synthetic"},
}
ONE_RUN["studies"] = [{"sequence": "mnist-fmnist", "methods": ["baseline"]}]
"""A synthetic experiment of a single run (for checks that need a sweep to finish)."""


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch):
    """Fresh data caches; the git SHA pinned by an in-process sweep does not leak."""
    monkeypatch.delenv(provenance.PIN, raising=False)
    data.clear_cache()
    yield
    data.clear_cache()


# -- helpers -------------------------------------------------------------------------------------


def _toml_value(value):
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def write_experiment(path: Path, exp: dict) -> Path:
    """``exp`` (plain tables, one level of sub-tables, a list of studies) as a TOML file."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in exp.items() if not isinstance(v, (dict, list))]
    lines += [
        f"{k} = {_toml_value(exp[k])}" for k in ("seeds", "selection_seeds", "notes") if k in exp
    ]
    for key in ("defaults", "lambdas"):
        if key in exp:
            lines.append(f"[{key}]")
            lines += [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in exp[key].items()]
    for label, settings in exp.get("method_settings", {}).items():
        lines.append(f"[method_settings.{json.dumps(label)}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    for study in exp["studies"]:
        lines.append("[[studies]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in study.items()]
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text()) == exp  # the file says what the test means
    return path


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, **(extra or {})}
    env.pop(provenance.PIN, None)
    return env


def _default_signals() -> None:
    """In the child: SIGINT back to its default, as in a terminal. A shell's background job
    (``cmd &``) inherits SIGINT ignored, and Python then installs no Ctrl-C handler, so the
    interruption tests would test the caller's shell instead of the sweep."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _popen(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark", *map(str, args)],
        cwd=REPO,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )


def cli_parallel(*commands) -> list[subprocess.CompletedProcess]:
    """Run several ``python -m benchmark`` commands at once (each ``args`` or ``(args, env)``)."""
    procs = []
    for command in commands:
        args, env = command if isinstance(command, tuple) else (command, None)
        procs.append((args, _popen(*args, env=env)))
    done = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def run_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return cli_parallel((list(args), env))[0]


def main(capsys, *args) -> tuple[int, str, str]:
    """``cli.main(args)`` in process: exit status (argparse's SystemExit included), out, err."""
    try:
        code = cli.main([str(a) for a in args], prog="python -m benchmark")
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def assert_one_line_errors(code: int, stderr: str, n: int = 1, status: int = 2) -> list[str]:
    """Exit ``status``; stderr is exactly ``n`` lines, each ``error: ...``; no traceback."""
    assert code == status, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == n and all(line.startswith("error: ") for line in lines), stderr
    return lines


def record_files(results: Path) -> list[Path]:
    return sorted((Path(results) / "runs").glob("*.json"))


def snapshot(results: Path) -> dict[str, int]:
    """Record file name -> mtime (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in record_files(results)}


def no_training(monkeypatch):
    """Make any training fail the test."""

    def refuse(config, **kw):
        pytest.fail(f"trained {config.label} although the command should have stopped before")

    monkeypatch.setattr(harness, "run", refuse)


def counting_run(monkeypatch, fail=None) -> list[str]:
    """Wrap ``harness.run``: the run ids it is called with; ``fail(config)`` may raise first."""
    calls: list[str] = []
    real = REAL_RUN

    def wrapped(config, **kw):
        calls.append(config.run_id)
        if fail is not None:
            fail(config)
        return real(config, **kw)

    monkeypatch.setattr(harness, "run", wrapped)
    return calls


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not records.pid_alive(proc.pid)
    return proc.pid


# -- 1. the new user -----------------------------------------------------------------------------


def test_new_user_missing_data_then_fake_root_then_report(tmp_path):
    exp = write_experiment(tmp_path / "first.toml", FIRST)
    empty = tmp_path / "empty"
    empty.mkdir()
    fake = write_fake_root(tmp_path / "data")
    res, res_cuda, res_cpu = tmp_path / "results", tmp_path / "res-cuda", tmp_path / "res-cpu"
    sweep = ["sweep", "--experiment", exp]

    missing, cuda = cli_parallel(
        [*sweep, "--results", res, "--data-root", empty],
        (
            [*sweep, "--results", res_cuda, "--data-root", fake, "--device", "cuda"],
            {"CUDA_VISIBLE_DEVICES": ""},
        ),
    )
    lines = assert_one_line_errors(missing.returncode, missing.stderr, n=2)
    for line, label in zip(lines, ("MNIST", "FashionMNIST")):
        assert line.startswith(f"error: {label} not found")
        assert str(empty.resolve() / label / "raw") in line
        for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            assert name in line
    assert not res.exists()  # nothing written, not even the folder
    (line,) = assert_one_line_errors(cuda.returncode, cuda.stderr)
    assert "'cuda'" in line and "--device cpu" in line
    assert not res_cuda.exists()

    ok = run_cli(*sweep, "--results", res, "--data-root", fake)
    assert ok.returncode == 0, ok.stderr
    assert "Traceback" not in ok.stderr and not error_lines(ok.stderr)
    found = list(read_records(res))
    assert len(record_files(res)) == FIRST_RECORDS == len(found)
    assert {r.status for r in found} == {"ok"}
    assert all(r.config["data"] == "real" for r in found)
    meta = json.loads((res / "sweep.json").read_text())
    assert meta["counts"]["selection"]["ran"] == 2 and meta["counts"]["selection"]["reused"] == 0
    assert meta["counts"]["final"]["ran"] == 4 and meta["counts"]["final"]["reused"] == 0
    assert "2 finished, 0 diverged, 0 failed" in ok.stderr

    out = tmp_path / "report"
    report, cpu = cli_parallel(
        ["report", "--results", res, "--out", out],
        [*sweep, "--results", res_cpu, "--data-root", fake, "--device", "cpu"],
    )
    assert report.returncode == 0, report.stderr
    assert "Traceback" not in report.stderr and not error_lines(report.stderr)
    text = (out / "REPORT.md").read_text()
    assert "mnist-fmnist" in text and "ewc diag-exact" in text
    assert re.search(r"^\| method \| λ \|", text, re.M)  # a result table, with a row
    assert re.search(r"^\| baseline \|", text, re.M)
    assert cpu.returncode == 0, cpu.stderr
    assert "Traceback" not in cpu.stderr and not error_lines(cpu.stderr)
    # the default device is the cpu: the same runs, with the same ids
    assert [p.name for p in record_files(res_cpu)] == [p.name for p in record_files(res)]
    assert len(record_files(res)) == FIRST_RECORDS  # the report wrote no record


# -- 2. corrupt data -----------------------------------------------------------------------------


def _truncate(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:5000])
    return "truncated"


def _truncate_header(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:10])
    return "truncated"


def _bad_magic(path: Path) -> str:
    path.write_bytes(bytes.fromhex("DEADBEEF") + path.read_bytes()[4:])
    return "magic number 0xDEADBEEF"


@pytest.mark.parametrize("corrupt", [_truncate, _truncate_header, _bad_magic])
def test_corrupt_data_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, corrupt):
    exp = write_experiment(tmp_path / "first.toml", FIRST)
    fake = write_fake_root(tmp_path / "data")
    bad = fake / "MNIST" / "raw" / "train-images-idx3-ubyte"
    what = corrupt(bad)
    no_training(monkeypatch)
    res = tmp_path / "results"
    code, _, err = main(capsys, "sweep", "--experiment", exp, "--results", res, "--data-root", fake)
    (line,) = assert_one_line_errors(code, err)
    assert str(bad.resolve()) in line and what in line
    assert "not found" not in line and "AssertionError" not in line
    assert not res.exists()


# -- 3. values the command line refuses --------------------------------------------------------


REFUSED = {
    "lam=NaN": "lambda comes from the experiment's grids",
    "seed=3": "use --seeds",
    "method=l2": "methods come from each study's list",
    "sequence=permuted-mnist": "each study names its sequence",
    "estimator=kfac-exact": "estimators come from each study's method list",
}


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("setting", list(REFUSED))
def test_set_refuses_what_the_experiment_decides(tmp_path, capsys, monkeypatch, setting, dry_run):
    exp = write_experiment(tmp_path / "one.toml", ONE_RUN)
    no_training(monkeypatch)
    res = tmp_path / "results"
    args = ["sweep", "--experiment", exp, "--results", res, "--set", setting]
    code, out, err = main(capsys, *args, *(["--dry-run"] if dry_run else []))
    (line,) = assert_one_line_errors(code, err)
    key = setting.split("=")[0]
    assert f"--set {key}=... is refused: " in line and REFUSED[setting] in line
    assert out == "" and not res.exists()


def test_set_applies_to_every_run_over_study_and_method_settings():
    exp = {
        **TINY,
        "method_settings": {"l2": {"epochs": 3}},
        "studies": [{**TINY["studies"][0], "settings": {"epochs": 1}}],
    }
    assert {g.base.epochs for g in parse_experiment(exp).groups} == {1, 3}
    parsed = parse_experiment(exp, {"epochs": 2})
    configs = parsed.selection_configs()
    assert len(configs) == 3 and {c.epochs for c in configs} == {2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--seeds", "-1", "--dry-run"], "argument --seeds: expected comma-separated"),
        (["sweep", "--jobs", "0"], "argument --jobs: expected a positive integer"),
        (["run", "--data", "synthetic", "--lam", "1e300"], "'lam' = 1e+300 is invalid"),
        (["sweep", "--set", "lr=1e300"], "'lr' = 1e+300 is invalid"),
        (["sweep", "--set", "lr=1e300", "--dry-run"], "'lr' = 1e+300 is invalid"),
    ],
)
def test_bad_values_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    exp = write_experiment(tmp_path / "one.toml", ONE_RUN)
    no_training(monkeypatch)
    res = tmp_path / "results"
    where = ["--experiment", exp] if args[0] == "sweep" else []
    code, _, err = main(capsys, args[0], *where, "--results", res, *args[1:])
    (line,) = assert_one_line_errors(code, err)
    assert message in line
    assert not res.exists()


def test_refusals_through_the_real_command_line(tmp_path):
    exp = write_experiment(tmp_path / "one.toml", ONE_RUN)
    res = tmp_path / "results"
    base = ["sweep", "--experiment", exp, "--results", res]
    refused, seeds, results_file, plain, debug = cli_parallel(
        [*base, "--set", "lam=NaN"],
        [*base, "--seeds", "-1"],
        ["sweep", "--experiment", exp, "--results", exp],  # a file, not a folder
        ["sweep", "--experiment", tmp_path / "nope.toml", "--dry-run"],
        ["--debug", "sweep", "--experiment", tmp_path / "nope.toml", "--dry-run"],
    )
    (line,) = assert_one_line_errors(refused.returncode, refused.stderr)
    assert "--set lam=... is refused: lambda comes from the experiment's grids" in line
    (line,) = assert_one_line_errors(seeds.returncode, seeds.stderr)
    assert "--seeds" in line and "'-1'" in line
    (line,) = assert_one_line_errors(results_file.returncode, results_file.stderr)
    assert f"--results {exp} is a file, not a folder" in line
    assert not res.exists()
    # --debug shows the traceback of what is otherwise one line
    (line,) = assert_one_line_errors(plain.returncode, plain.stderr)
    assert "nope.toml does not exist" in line
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "nope.toml does not exist" in debug.stderr.strip().splitlines()[-1]


# -- 4. one sweep per folder ---------------------------------------------------------------------


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class StderrReader:
    """Collects a process's stderr in a thread (the progress bars write without newlines)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for chunk in iter(lambda: stream.read(1), ""):
            self.text += chunk

    def join(self) -> str:
        self._thread.join(timeout=30)
        return self.text


def test_second_sweep_on_a_folder_is_refused_or_waits(tmp_path):
    exp = write_experiment(tmp_path / "one.toml", ONE_RUN)
    res = tmp_path / "results"
    command = ["sweep", "--experiment", exp, "--results", res]
    held = lock.FolderLock(res)
    held.acquire()
    proc = None
    try:
        refused = run_cli(*command)
        (line,) = assert_one_line_errors(refused.returncode, refused.stderr)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in line
        assert "--wait" in line
        assert record_files(res) == []

        proc = _popen(*command, "--wait")
        reader = StderrReader(proc)
        _wait_for(lambda: "waiting for" in reader.text, 60, "the sweep to wait for the lock")
        assert f"pid {os.getpid()}" in reader.text
        time.sleep(2.0)
        assert proc.poll() is None and record_files(res) == []  # still waiting
    except BaseException:
        if proc is not None:
            proc.kill()
        raise
    finally:
        releaser = threading.Thread(target=held.release)  # released from another thread
        releaser.start()
        releaser.join()
    assert proc.wait(timeout=120) == 0, reader.join()
    err = reader.join()
    assert "Traceback" not in err and not error_lines(err)
    assert len(record_files(res)) == 1


def test_stale_lock_is_taken_over(tmp_path, capsys):
    exp = write_experiment(tmp_path / "one.toml", ONE_RUN)
    res = tmp_path / "results"
    res.mkdir()
    pid = dead_pid()
    (res / lock.LOCK_NAME).write_text(
        json.dumps({"pid": pid, "host": socket.gethostname(), "command": "an old sweep"})
    )
    code, _, err = main(capsys, "sweep", "--experiment", exp, "--results", res)
    assert code == 0, err
    assert f"took over the lock of pid {pid}" in err
    assert "Traceback" not in err and not error_lines(err)
    assert len(record_files(res)) == 1
    assert lock.read_owner(res / lock.LOCK_NAME) is None  # released: emptied


def test_startup_cleanup_removes_only_dead_writers_temp_files(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    host = socket.gethostname()
    dead = runs / f".abc~{host}~{dead_pid()}~x.tmp"
    live = runs / f".abc~{host}~{os.getpid()}~y.tmp"
    other = runs / f".abc~not-{host}~{dead_pid()}~z.tmp"
    for path in (dead, live, other):
        path.write_text("{")
    assert records.clean_partial(tmp_path) == 1
    assert not dead.exists() and live.exists() and other.exists()


# -- 5. corrupt records --------------------------------------------------------------------------


def _corrupt_records(results: Path, paths: list[Path]) -> None:
    truncated, garbage, wrong_schema = paths
    truncated.write_text(truncated.read_text()[: len(truncated.read_text()) // 2])
    garbage.write_bytes(b"\x00\xffnot json at all\x89")
    wrong_schema.write_text(json.dumps({"schema": "ewc-bench/run/99", "run_id": wrong_schema.stem}))


def _quarantined(results: Path) -> tuple[list[Path], list[Path]]:
    folder = results / records.QUARANTINE
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    reasons = [p for p in files if p.name.endswith(".reason")]
    return [p for p in files if p not in reasons], reasons


def test_corrupt_records_are_quarantined_and_redone(tmp_path, monkeypatch, capsys):
    from benchmark.report import build_report

    res = tmp_path / "results"
    run_sweep(parse_experiment(TINY), res)
    files = record_files(res)
    assert len(files) == 9
    meta = json.loads((res / "sweep.json").read_text())
    final_only = set(meta["run_ids"]["final"]) - set(meta["run_ids"]["selection"])
    final = [p for p in files if p.stem in final_only]
    l2_sel = next(  # l2's grid has one value: redoing it cannot change its chosen lambda
        p for p in files if p.stem in meta["run_ids"]["selection"] and '"l2"' in p.read_text()
    )
    chosen = [final[0], final[1], l2_sel]
    before = {p.name: p.read_bytes() for p in chosen}
    _corrupt_records(res, chosen)
    corrupt = {p.name: p.read_bytes() for p in chosen}
    capsys.readouterr()

    calls = counting_run(monkeypatch)
    meta = run_sweep(parse_experiment(TINY), res)
    assert sorted(calls) == sorted(p.stem for p in chosen)  # exactly those, once each
    assert len(record_files(res)) == 9 and {r.status for r in read_records(res)} == {"ok"}
    moved, reasons = _quarantined(res)
    assert len(moved) == 3 and len(reasons) == 3  # nothing deleted
    assert sorted(p.read_bytes() for p in moved) == sorted(corrupt.values())
    text = " ".join(p.read_text() for p in reasons)
    assert "not valid JSON" in text and "unsupported record schema 'ewc-bench/run/99'" in text
    assert meta["counts"]["selection"]["ran"] == 1 and meta["counts"]["final"]["ran"] == 2
    err = capsys.readouterr().err
    assert err.count("moved to") == 3
    for p in chosen:  # the same numbers as before (redone, not invented)
        assert json.loads(p.read_text())["acc_test"] == json.loads(before[p.name])["acc_test"]

    # the report reads a folder with a corrupt record: quarantined, left out, report built
    victim = final[2]
    victim.write_text("{")
    out = tmp_path / "report"
    code, _, err = main(capsys, "report", "--results", res, "--out", out)
    assert code == 0, err
    assert "Traceback" not in err and not error_lines(err) and "moved to" in err
    assert (out / "REPORT.md").read_text().strip()
    assert len(record_files(res)) == 8 and len(_quarantined(res)[0]) == 4

    # --retry-failed: the quarantined run is redone, nothing else
    calls.clear()
    run_sweep(parse_experiment(TINY), res, retry_failed=True)
    assert calls == [victim.stem] and len(record_files(res)) == 9

    # a corrupt sweep.json: quarantined by the report, which still builds
    (res / "sweep.json").write_text('{"experiment": "tiny", ')
    code, _, err = main(capsys, "report", "--results", res, "--out", out)
    assert code == 0, err
    assert "Traceback" not in err and not error_lines(err)
    assert not (res / "sweep.json").exists()
    moved, reasons = _quarantined(res)
    assert any(p.name.startswith("sweep.json") for p in moved) and len(reasons) == 5
    assert build_report(res, tmp_path / "report2").read_text().strip()


# -- 6. folders ----------------------------------------------------------------------------------


def test_out_file_and_run_results_file_stop_before_training(tmp_path, capsys, monkeypatch):
    exp = write_experiment(tmp_path / "one.toml", ONE_RUN)
    no_training(monkeypatch)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    res = tmp_path / "results"
    code, _, err = main(capsys, "reproduce", "--experiment", exp, "--results", res, "--out", a_file)
    (line,) = assert_one_line_errors(code, err)
    assert f"--out {a_file} is a file, not a folder" in line
    assert not res.exists()
    code, _, err = main(capsys, "run", "--data", "synthetic", "--epochs", "1", "--results", a_file)
    (line,) = assert_one_line_errors(code, err)
    assert f"--results {a_file} is a file, not a folder" in line
    assert a_file.read_text() == "not a folder"


def test_read_only_results_folder_stops_before_training(tmp_path, capsys, monkeypatch):
    exp = write_experiment(tmp_path / "one.toml", ONE_RUN)
    res = tmp_path / "results"
    res.mkdir()
    no_training(monkeypatch)
    real = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kw):
        if dir is not None and Path(dir).resolve() == res.resolve():
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(preflight.tempfile, "TemporaryFile", read_only)
    code, _, err = main(capsys, "sweep", "--experiment", exp, "--results", res)
    (line,) = assert_one_line_errors(code, err)
    assert f"--results {res} is not writable: read-only file system" in line
    assert list(res.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 folder anyway")
def test_read_only_results_folder_for_real(tmp_path, capsys, monkeypatch):
    exp = write_experiment(tmp_path / "one.toml", ONE_RUN)
    res = tmp_path / "results"
    res.mkdir()
    no_training(monkeypatch)
    res.chmod(0o555)
    try:
        code, _, err = main(capsys, "sweep", "--experiment", exp, "--results", res)
    finally:
        res.chmod(0o755)
    (line,) = assert_one_line_errors(code, err)
    assert f"--results {res} is not writable" in line
    assert list(res.iterdir()) == []


# -- 7. memory -----------------------------------------------------------------------------------


def test_curvature_over_its_memory_budget_stops_before_training(tmp_path, capsys, monkeypatch):
    exp = write_experiment(
        tmp_path / "mem.toml",
        {
            **ONE_RUN,
            "name": "mem",
            "method_settings": {"ewc full-exact": {"estimator_options": {"memory_budget": 1000}}},
            "studies": [{"sequence": "mnist-fmnist", "methods": ["baseline", "ewc full-exact"]}],
        },
    )
    no_training(monkeypatch)
    res = tmp_path / "results"
    code, _, err = main(capsys, "sweep", "--experiment", exp, "--results", res)
    (line,) = assert_one_line_errors(code, err)
    assert "ewc full-exact" in line and "memory budget of 1000 B" in line
    assert re.search(r"would need [\d.]+ \w+ \([\d,]+ bytes\)", line), line
    assert not res.exists()


# -- 8. failures that heal -----------------------------------------------------------------------


def _fail_two(config):
    if config.seed == 1 and config.method == "baseline":
        raise data.DataNotFoundError("MNIST not found: missing train-images-idx3-ubyte")
    if config.seed == 1 and config.method == "l2":
        raise RuntimeError("boom")


def test_failures_are_classified_and_heal_on_resume(tmp_path, monkeypatch):
    res = tmp_path / "results"
    counting_run(monkeypatch, fail=_fail_two)
    meta = run_sweep(parse_experiment(TINY), res)
    failed = {r.config["method"]: r for r in read_records(res) if r.status == "failed"}
    assert set(failed) == {"baseline", "l2"}
    assert failed["baseline"].failure == "environment" and failed["l2"].failure == "run"
    assert "boom" in failed["l2"].message and "MNIST not found" in failed["baseline"].message
    final = meta["counts"]["final"]
    assert final["failed"] == 2 and final["ok"] == 4 and final["runs"] == 6
    assert {f["failure"] for f in final["failed_runs"]} == {"environment", "run"}
    assert len(record_files(res)) == 9

    calls = counting_run(monkeypatch)
    meta = run_sweep(parse_experiment(TINY), res)
    assert calls == [failed["baseline"].run_id]  # the environment failure, only
    assert meta["counts"]["final"]["failed"] == 1
    calls.clear()
    meta = run_sweep(parse_experiment(TINY), res, retry_failed=True)
    assert calls == [failed["l2"].run_id]
    assert meta["counts"]["final"].get("failed", 0) == 0 and meta["counts"]["final"]["ok"] == 6
    assert len(record_files(res)) == 9 and {r.status for r in read_records(res)} == {"ok"}


def test_sweep_and_reproduce_exit_1_on_a_failed_run(tmp_path, capsys, monkeypatch):
    exp = write_experiment(tmp_path / "tiny.toml", {**ONE_RUN, "seeds": [0, 1]})

    def fail(config):
        if config.seed == 1:
            raise RuntimeError("boom")

    counting_run(monkeypatch, fail=fail)
    res = tmp_path / "results"
    code, _, err = main(capsys, "sweep", "--experiment", exp, "--results", res)
    assert code == 1 and "Traceback" not in err
    (bad,) = [r for r in read_records(res) if r.status == "failed"]
    assert f"failed [run] {bad.run_id} mnist-fmnist bn=freeze baseline" in err and "boom" in err
    (line,) = error_lines(err)
    assert "1 runs failed" in line and "--retry-failed" in line
    assert len(record_files(res)) == 2

    out = tmp_path / "report"
    res2 = tmp_path / "results2"
    code, _, err = main(
        capsys, "reproduce", "--experiment", exp, "--results", res2, "--out", out, "--no-pipeline"
    )
    assert code == 1 and "Traceback" not in err
    (line,) = error_lines(err)
    assert "the report was not rebuilt" in line
    assert not (out / "REPORT.md").exists()
    assert len(record_files(res2)) == 2


def test_run_id_has_the_device_kind_and_the_results_version(monkeypatch):
    cpu = RunConfig(device="cpu").run_id
    assert cpu != RunConfig(device="cuda").run_id
    assert RunConfig(device="cuda").run_id == RunConfig(device="cuda:1").run_id
    monkeypatch.setattr(config, "RESULTS_VERSION", config.RESULTS_VERSION + 1)
    assert RunConfig(device="cpu").run_id != cpu


# -- 9. worker death -----------------------------------------------------------------------------


class DyingExecutor:
    """A process pool stand-in whose worker dies under some configs.

    Submissions wait until the driver waits. If a config in ``dies`` with deaths left is among
    them, its worker dies and, as in ``ProcessPoolExecutor``, every run in flight fails with
    ``BrokenProcessPool`` (the pool is broken; runs of the other worker are lost too); else
    they all run.
    """

    def __init__(self, dies) -> None:
        self.dies = dies  # run_id -> how many more times it kills its worker (None: always)
        self.pending: list[tuple[Future, object, tuple]] = []
        self.broken = False

    def submit(self, fn, *args):
        if self.broken:  # as ProcessPoolExecutor.submit
            raise BrokenProcessPool("the pool is broken")
        future: Future = Future()
        self.pending.append((future, fn, args))
        return future

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for _, _, args in pending:
            (config,) = args[0]  # a unit of one run (group size 1)
            run_id = RunConfig.from_dict(config).run_id
            left = self.dies.get(run_id, 0)
            if left is None or left > 0:
                if left is not None:
                    self.dies[run_id] = left - 1
                self.broken = True
                for future, _, _ in pending:
                    future.set_exception(BrokenProcessPool("a process was terminated abruptly"))
                return
        for future, fn, args in pending:
            future.set_result(fn(*args))

    def shutdown(self, wait=True, cancel_futures=False) -> None:
        self.pending.clear()


class DyingPool:
    """``execution.Pool`` with ``DyingExecutor`` executors (a fresh one per rebuild)."""

    def __init__(self, dies, jobs: int = 2) -> None:
        self.jobs, self.dies, self.rebuilds = jobs, dies, 0
        self.executor = DyingExecutor(dies)
        self.executors = [self.executor]

    inline = False
    group_size = 1

    def rebuild(self) -> None:
        self.rebuilds += 1
        self.executor = DyingExecutor(self.dies)
        self.executors.append(self.executor)

    def close(self, *, kill: bool = False) -> None:
        pass


def test_worker_death_is_retried_and_blamed_on_the_run_that_dies(tmp_path, monkeypatch):
    configs = [
        RunConfig(data="synthetic", method="baseline", estimator=None, seed=s) for s in range(6)
    ]
    ran: list[int] = []

    def fake_run(config, **kw):
        ran.append(config.seed)
        return RunRecord(run_id=config.run_id, config=config.to_dict())

    monkeypatch.setattr(harness, "run", fake_run)
    flaky, deadly = configs[1].run_id, configs[3].run_id
    pool = DyingPool({flaky: 1, deadly: None})
    real_wait = execution.wait

    def wait(futures, return_when):
        pool.executor.flush()
        return real_wait(futures, return_when=return_when)

    monkeypatch.setattr(execution, "wait", wait)
    tally = execution.run_configs(configs, tmp_path, pool)

    assert sorted(ran) == [0, 1, 2, 4, 5]  # every other run ran exactly once
    found = {r.config["seed"]: r for r in read_records(tmp_path)}
    assert len(found) == 6 and len(record_files(tmp_path)) == 6
    assert found[1].status == "ok"  # its worker died once: tried again, finished
    assert found[3].status == "failed" and found[3].failure == "environment"
    assert f"died (killed, or out of memory) {execution.MAX_ATTEMPTS} time(s)" in found[3].message
    assert all(found[s].status == "ok" for s in (0, 1, 2, 4, 5))
    assert tally.ran == {"ok": 5, "failed": 1}
    assert pool.rebuilds == 1 + execution.MAX_ATTEMPTS  # a new pool after every death


# -- 10. no orphans (real processes) -------------------------------------------------------------


SLOW = {
    "name": "slow",
    "seeds": [0, 1, 2, 3, 4, 5],
    "selection_seeds": [7],
    "defaults": {"data": "synthetic", "epochs": 20, "fisher_samples": 32, "eval_limit": 100},
    "lambdas": {"default": [1.0, 10.0, 100.0]},
    "studies": [
        {"sequence": "mnist-fmnist", "bn": ["freeze"], "methods": ["baseline", "ewc diag-exact"]}
    ],
}
"""3 selection runs (seed 7), then 12 test runs (2 groups x 6 seeds), about a second each."""
SLOW_RECORDS = 15


def children(pid: int) -> dict[int, str]:
    """Live (not zombie) child processes of ``pid``: pid -> command line."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(stat.parent.name)] = cmdline
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _workers(driver: subprocess.Popen) -> dict[int, str]:
    return {p: c for p, c in children(driver.pid).items() if "multiprocessing" in c}


def _start_and_wait(command, results: Path, new_records: int, seen: list[int]):
    """Start the sweep; return once 2 workers run and ``new_records`` more records exist."""
    before = len(record_files(results))
    proc = _popen(*command)
    seen.append(proc.pid)
    _wait_for(lambda: len(_workers(proc)) >= 2, 90, "two worker processes")
    _wait_for(
        lambda: len(record_files(results)) >= before + new_records or proc.poll() is not None,
        90,
        "new records",
    )
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    workers = children(proc.pid)
    seen += workers
    return proc, list(workers)


def _kill_if_ours(pid: int) -> None:
    """SIGKILL ``pid`` if it is still one of the sweep's processes (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if alive(pid) and (b"multiprocessing" in cmdline or b"benchmark" in cmdline):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _assert_gone(pids, timeout: float = 20.0) -> None:
    """Every pid exits within ``timeout``: a worker still importing torch on a loaded machine
    starts its parent watcher only after the import (several seconds on 2 busy cores)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "worker processes outlived their driver"


def test_no_orphans_and_interrupted_sweeps_resume(tmp_path):
    exp = write_experiment(tmp_path / "slow.toml", SLOW)
    res = tmp_path / "results"
    command = ["sweep", "--experiment", exp, "--results", res, "--jobs", "2"]
    seen: list[int] = []  # every process this test started: none is left behind, whatever happens
    try:
        # SIGKILL: the driver cannot clean up; its workers notice and exit
        proc, workers = _start_and_wait(command, res, 0, seen)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        n = len(record_files(res))
        _assert_gone(workers)  # (before reading its pipes: a live worker holds them open)
        proc.communicate(timeout=30)
        time.sleep(1.0)
        assert len(record_files(res)) == n  # nobody writes after the driver's death

        # SIGTERM, then SIGINT (to the driver only): exit 130, say how to resume, workers gone
        for sig in (signal.SIGTERM, signal.SIGINT):
            kept = snapshot(res)
            proc, workers = _start_and_wait(command, res, 1, seen)
            os.kill(proc.pid, sig)
            proc.wait(timeout=30)
            _assert_gone(workers)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 130, err
            assert "Traceback" not in err and not error_lines(err)
            assert "run the same command again to resume" in err
            if sig == signal.SIGTERM:
                assert "took over the lock" in err  # the SIGKILLed driver's
            now = snapshot(res)
            assert {k: now[k] for k in kept} == kept  # finished records untouched
            assert len(now) > len(kept)
    finally:
        for pid in seen:
            _kill_if_ours(pid)

    kept = snapshot(res)
    assert 0 < len(kept) < SLOW_RECORDS
    done = run_cli(*command)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and not error_lines(done.stderr)
    now = snapshot(res)
    assert {k: now[k] for k in kept} == kept and len(now) == SLOW_RECORDS
    assert {r.status for r in read_records(res)} == {"ok"}
    meta = json.loads((res / "sweep.json").read_text())
    ran = meta["counts"]["selection"]["ran"] + meta["counts"]["final"]["ran"]
    assert ran == SLOW_RECORDS - len(kept)  # only the unfinished runs were done
    assert not list((res / "runs").glob(".*.tmp"))


# -- 11. progress --------------------------------------------------------------------------------


def test_progress_moves_as_each_run_finishes(tmp_path, monkeypatch):
    events: list[str] = []

    class Bar:
        def __init__(self, *args, **kw) -> None:
            pass

        def update(self, n=1) -> None:
            events.append("update")

        def set_postfix_str(self, *args, **kw) -> None:
            pass

        def close(self) -> None:
            pass

    def fake_run(config, **kw):
        events.append("run")
        return RunRecord(run_id=config.run_id, config=config.to_dict())

    monkeypatch.setattr(harness, "run", fake_run)
    monkeypatch.setattr(execution, "tqdm", Bar)
    configs = [
        RunConfig(data="synthetic", method="baseline", estimator=None, seed=s) for s in range(4)
    ]
    pool = execution.Pool(1)
    execution.run_configs(configs, tmp_path, pool)
    pool.close()
    assert events == ["run", "update"] * 4


# -- 12. download --------------------------------------------------------------------------------


def test_download_path(tmp_path, capsys, monkeypatch):
    exp = write_experiment(tmp_path / "first.toml", {**FIRST, "seeds": [0]})
    downloads: list[str] = []

    def fake_download(name, base):
        downloads.append(name)
        write_dataset(base, name)

    monkeypatch.setattr(data, "_download", fake_download)
    res = tmp_path / "results"
    code, _, err = main(
        capsys, "sweep", "--experiment", exp, "--results", res,
        "--data-root", tmp_path / "data", "--download",
    )  # fmt: skip
    assert code == 0, err
    assert "Traceback" not in err and not error_lines(err)
    assert sorted(downloads) == ["fmnist", "mnist"]
    assert "downloading MNIST into" in err and "downloading FashionMNIST into" in err
    assert len(record_files(res)) == 4 and {r.status for r in read_records(res)} == {"ok"}

    downloads.clear()
    res2 = tmp_path / "results2"
    code, _, err = main(
        capsys, "sweep", "--experiment", exp, "--results", res2, "--data-root", tmp_path / "none"
    )
    assert_one_line_errors(code, err, n=2)
    assert downloads == [] and not res2.exists()


# -- 13. small things ----------------------------------------------------------------------------


def test_redact_argv(monkeypatch, tmp_path):
    monkeypatch.delenv(provenance.DATA_ROOT_ENV, raising=False)
    absolute = str(tmp_path / "data")
    argv = ["sweep", "--data-root", absolute, "--jobs", "2"]
    assert provenance.redact_argv(argv) == ["sweep", "--data-root", "<data root>", "--jobs", "2"]
    assert provenance.redact_argv([f"--data-root={absolute}"]) == ["--data-root=<data root>"]
    assert provenance.redact_argv(["--data-root", "../shared/data"]) == [
        "--data-root",
        "../shared/data",
    ]
    monkeypatch.setenv(provenance.DATA_ROOT_ENV, absolute)
    assert provenance.redact_argv(["--data-root", absolute]) == ["--data-root", "$EWC_BENCH_DATA"]
    assert provenance.redact_argv(["--data-root", "/elsewhere"]) == ["--data-root", "<data root>"]


def test_project_license_is_a_string():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str) and project["license"]


def test_the_memory_check_builds_the_model_with_its_options():
    """The check sizes the network the run trains (model options) at each run's sample count."""
    from benchmark.preflight import check_memory

    small = RunConfig(
        model="mlp",
        model_options={"hidden": 16},
        method="ewc",
        estimator="full-exact",
        estimator_options={"representation": "factor", "memory_budget": 600 * 2**20},
        fisher_samples=1000,
    )
    assert check_memory([small]) == []  # 10,000 rows x P = 13,002: 496 MiB
    big = small.replace(model_options={"hidden": 100})  # P = 89,610: 3.3 GiB
    (problem,) = check_memory([small, big])
    assert "mlp hidden=100" in problem and "89,610" in problem
    (problem,) = check_memory([small, small.replace(fisher_samples=2000)])
    assert "fisher_samples = 2000" in problem
