"""``make bench-compare``: the baseline check, and that the compare options fail on a regression.

The regression test runs pytest-benchmark twice in subprocesses on a throwaway benchmark (a sleep
of 2 ms, then of 20 ms), with the options the Makefile passes, and expects the second run to fail.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pytest_benchmark.utils import get_machine_id

from benchmark.costs import bench_baseline

ROOT = Path(__file__).resolve().parents[1]
BENCH = """
import time

def test_sleep(benchmark):
    benchmark.pedantic(time.sleep, args=({seconds},), rounds=5, iterations=1)
"""


def test_missing_baseline_fails_with_instructions(tmp_path, capsys):
    assert bench_baseline.main(["--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert get_machine_id() in err and "make bench-baseline" in err


def test_existing_baseline_is_named(tmp_path, capsys):
    folder = tmp_path / get_machine_id()
    folder.mkdir()
    (folder / "0001_baseline.json").write_text("{}")
    (folder / "0002_baseline.json").write_text("{}")
    assert bench_baseline.main(["--storage", str(tmp_path)]) == 0
    assert "0002_baseline.json" in capsys.readouterr().out


def _makefile_option(name: str) -> str:
    """The default of ``NAME ?= value`` in the Makefile."""
    match = re.search(rf"^{name} \?= (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"{name} not in the Makefile"
    return match.group(1).strip()


def _run(tmp_path: Path, seconds: float, *options: str) -> subprocess.CompletedProcess:
    test = tmp_path / "bench_case.py"
    test.write_text(BENCH.format(seconds=seconds))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(test),
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-enable",
            "--benchmark-only",
            f"--benchmark-storage=file://{tmp_path / 'storage'}",
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )


def test_compare_fails_on_a_clear_regression(tmp_path):
    saved = _run(tmp_path, 0.002, "--benchmark-save=baseline")
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert bench_baseline.main(["--storage", str(tmp_path / "storage")]) == 0
    fail = f"--benchmark-compare-fail={_makefile_option('COMPARE_FAIL')}"
    same = _run(tmp_path, 0.002, "--benchmark-compare", fail)
    assert same.returncode == 0, same.stdout + same.stderr
    slower = _run(tmp_path, 0.02, "--benchmark-compare", fail)
    assert slower.returncode != 0
    assert "Performance has regressed" in slower.stdout + slower.stderr
