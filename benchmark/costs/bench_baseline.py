"""Check that a saved pytest-benchmark baseline exists for this machine before comparing.

``make bench-compare`` compares the suite against the newest run saved under
``BENCH_STORAGE/<machine id>/`` (pytest-benchmark's layout, machine id e.g.
``Linux-CPython-3.11-64bit``). Without one, pytest-benchmark only warns and compares nothing, so
a regression would pass silently; this check fails first, saying how to save a baseline.
Baselines are per machine: timings from another machine are not a baseline for this one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_benchmark.utils import get_machine_id


def saved_runs(storage: Path, machine_id: str) -> list[Path]:
    """Saved runs (``NNNN_name.json``) of ``machine_id`` in ``storage``, oldest first."""
    folder = storage / machine_id
    return sorted(folder.glob("[0-9][0-9][0-9][0-9]_*.json")) if folder.is_dir() else []


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 naming the baseline, or 2 with instructions when there is none."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="the pytest-benchmark storage folder")
    args = parser.parse_args(argv)
    machine = get_machine_id()
    runs = saved_runs(Path(args.storage), machine)
    if not runs:
        print(
            f"no saved benchmark baseline for this machine ({machine}) under {args.storage}: "
            "run `make bench-baseline` first (on this machine, with nothing else running), "
            "then `make bench-compare`",
            file=sys.stderr,
        )
        return 2
    print(f"comparing against {runs[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
