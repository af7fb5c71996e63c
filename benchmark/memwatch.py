"""The memory a sweep takes on its machine: this process and its workers together, sampled.

A sweep's peak memory is not any one process's peak: its driver and its workers (one process
per run slot) hold memory at the same time. ``TreeMemory`` samples, every ``interval`` seconds on
a daemon thread, the *proportional set size* (PSS, Linux ``/proc/<pid>/smaps_rollup``) summed
over this process and all its descendants. PSS charges each shared page (torch's libraries,
copy-on-write data) once in total, split among the processes that map it, so the sum is the
memory the tree takes from the machine, unlike a sum of resident set sizes, which counts shared
pages once per process. A peak that falls between two samples is missed: the figure is a lower
bound of the true peak, close to it when memory changes slowly (runs last seconds to minutes).

Processes outside the tree (workers of a Dask cluster that this process did not start, an
orphan whose parent died, another sweep) are not counted. Where ``/proc`` lacks
``smaps_rollup`` (not Linux, or a kernel older than 4.14), nothing is sampled and ``peak_bytes``
stays None: the report then has no memory line for that invocation.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

PROC = Path("/proc")
DEFAULT_INTERVAL = 5.0
"""Seconds between samples. One sample reads ``smaps_rollup`` of every process of the tree, about
15-30 ms of CPU per GB-sized process (the kernel walks its page tables), so every 5 s it costs a
2-core machine under 1% of one core; the sampler's own CPU time is recorded (``summary``)."""


def descendants(root: int, proc: Path = PROC) -> list[int]:
    """``root`` and every process below it (parent links read from ``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    try:
        entries = list(proc.iterdir())
    except OSError:  # no /proc: only the root, unread
        return [root]
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # the command name (field 2) is in parentheses and may hold spaces: split after it
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def pss_bytes(pid: int, proc: Path = PROC) -> int | None:
    """The process's PSS in bytes (``Pss:`` of ``smaps_rollup``); None if unreadable."""
    try:
        with open(proc / str(pid) / "smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tree_pss(root: int, proc: Path = PROC) -> tuple[int, int]:
    """``(summed PSS bytes, processes counted)`` over ``root`` and its descendants."""
    values = [v for pid in descendants(root, proc) if (v := pss_bytes(pid, proc)) is not None]
    return sum(values), len(values)


def supported(proc: Path = PROC) -> bool:
    """Whether this machine exposes ``/proc/self/smaps_rollup``."""
    return (proc / "self" / "smaps_rollup").exists()


class TreeMemory:
    """Context manager: the peak summed PSS of this process tree while the block runs.

    Attributes:
        peak_bytes: the largest sample (None when unsupported or before the first sample).
        peak_seconds: seconds from the start to that sample.
        processes: processes counted in that sample.
        samples: samples taken.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, root: int | None = None) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.interval = interval
        self.root = os.getpid() if root is None else root
        self.peak_bytes: int | None = None
        self.peak_seconds: float | None = None
        self.processes = 0
        self.samples = 0
        self.cpu_seconds = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def sample(self) -> None:
        """Take one sample now (the thread calls this every ``interval`` seconds).

        Does nothing where ``/proc`` has no ``smaps_rollup``; safe from any thread.
        """
        if not supported():
            return
        cpu = time.thread_time()
        total, count = tree_pss(self.root)
        with self._lock:
            self.samples += 1
            self.cpu_seconds += time.thread_time() - cpu
            if count and (self.peak_bytes is None or total > self.peak_bytes):
                self.peak_bytes, self.processes = total, count
                self.peak_seconds = time.perf_counter() - self._t0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._t0 = time.perf_counter()
        if supported():
            self._thread = threading.Thread(target=self._loop, name="memwatch", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        """What ``sweep.json`` keeps: the peak, when, over how many processes, how sampled.

        Also the CPU seconds the sampling itself took (``sampler_cpu_seconds``).
        """
        with self._lock:
            return {
                "peak_pss_bytes": self.peak_bytes,
                "peak_after_seconds": self.peak_seconds,
                "processes_at_peak": self.processes,
                "samples": self.samples,
                "interval_seconds": self.interval,
                "sampler_cpu_seconds": round(self.cpu_seconds, 3),
            }
