"""Provenance: where and with what a result was produced (git SHA, versions, hardware, command)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

GENERATED = ("reports", "results", "README.md")
"""Generated outputs (and README.md, whose verdict block `make reproduce` rewrites before the
study runs); changes there do not make the code 'dirty'."""


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else ``platform.processor()``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


PIN = "EWC_BENCH_GIT_SHA"
"""Environment variable holding the SHA pinned at the start of a sweep (inherited by workers)."""


def pin_git_sha() -> str | None:
    """Record the code's SHA now, so runs that finish later report the code they ran.

    A long sweep keeps the modules it imported at its start; without the pin, a commit or an
    edit made meanwhile would be misattributed to the runs that finish after it.
    """
    os.environ.pop(PIN, None)
    sha = git_sha()
    if sha is not None:
        os.environ[PIN] = sha
    return sha


def git_sha() -> str | None:
    """The pinned SHA if any, else HEAD's (``-dirty`` with uncommitted code changes)."""
    if os.environ.get(PIN):
        return os.environ[PIN]
    root = Path(__file__).resolve().parents[1]
    excludes = [f":(exclude){d}" for d in GENERATED]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", *excludes],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("-dirty" if dirty else "")


def now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def machine(device: str = "cpu") -> dict[str, Any]:
    """Hardware and software versions."""
    env: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


DATA_ROOT_FLAG = "--data-root"
DATA_ROOT_ENV = "EWC_BENCH_DATA"


def shown_data_root(root: str | os.PathLike[str]) -> str:
    """A data root as reports may show it: as given when relative, else a placeholder.

    Committed reports never record a local absolute path: an absolute root reads
    ``$EWC_BENCH_DATA`` when it is that variable's value, else ``<data root>``.
    """
    text = str(root)
    if not Path(text).is_absolute():
        return text
    env = os.environ.get(DATA_ROOT_ENV, "")
    if env and Path(env).resolve() == Path(text).resolve():
        return f"${DATA_ROOT_ENV}"
    return "<data root>"


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value of ``--data-root`` shown as ``shown_data_root`` does."""
    out, after_flag = [], False
    for arg in argv:
        if after_flag:
            arg, after_flag = shown_data_root(arg), False
        elif arg == DATA_ROOT_FLAG:
            after_flag = True
        elif arg.startswith(DATA_ROOT_FLAG + "="):
            arg = f"{DATA_ROOT_FLAG}={shown_data_root(arg.split('=', 1)[1])}"
        out.append(arg)
    return out


def command_line() -> str:
    """The command that is running, as typed (``python -m ...`` for module runs).

    An absolute ``--data-root`` is shown as ``shown_data_root`` does (no local paths in reports).
    """
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m " + Path(argv[0]).parent.name
    return " ".join(redact_argv(argv))


def reset_peak_memory() -> bool:
    """Reset this process's peak resident memory (``/proc/self/clear_refs``); False if unable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (``VmHWM``), None where unknown."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None
