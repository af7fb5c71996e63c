"""How a cost is measured: timed calls, interleaved seeded-order rounds, peak memory, provenance.

Every cost measurement (``costs.timing``, ``costs.scaling``, ``costs.compare``) times its calls
with ``timed`` (the device synchronised before and after), in rounds whose order is a fresh
seeded permutation each (``shuffled``): a call's time depends on what ran just before it, so no
call may always follow the same one, and load on shared cores hits every row alike.

- ``TimedCall`` and ``interleaved_rounds``: a call against a reference (the floor) called right
  before each of its timed calls; ``interleaved_steps``: training-step variants, all stepped in
  every round.
- Peak memory: ``proc_peak`` (the kernel's high-water mark, reset through
  ``/proc/self/clear_refs``), ``cuda_peak`` (``torch.cuda.max_memory_allocated``) and
  ``peak_extra`` (whichever applies, in process).
- ``environment``: machine, versions, command, date and load average of a measurement.

Measuring only: nothing here formats or renders (``benchmark.report`` reads the records).
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from estimators import FisherMemoryError

from .. import provenance
from ..errors import UserError

SLOW_BUDGET_S = 30.0
"""A call whose warm-up takes longer gets fewer repeats, so that it spends about this."""
CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATUS = Path("/proc/self/status")


class SetupError(UserError, ValueError):
    """A cost measurement cannot start as configured (unknown name, too few inputs, bad value).

    A ``UserError``: the command line prints it as one line ``error: ...`` (exit status 2).
    """


def is_cuda(device: str | torch.device) -> bool:
    """Whether ``device`` (``cpu``, ``cuda``, ``cuda:N``) is a CUDA device."""
    return torch.device(device).type == "cuda"


# -- timed calls in seeded-order rounds --------------------------------------------------------


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes (device work included), and its result."""
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def shuffled(items: Sequence[Any], round_index: int, seed: int = 0) -> list[Any]:
    """``items`` in a permutation fixed by (``seed``, ``round_index``): reproducible, varied."""
    order = list(items)
    random.Random(seed * 1_000_003 + round_index).shuffle(order)
    return order


def repeats_for(warmup_s: float, repeats: int, budget_s: float = SLOW_BUDGET_S) -> int:
    """``repeats``, or fewer (at least 1) when one call takes a large share of ``budget_s``."""
    return max(1, min(repeats, int(budget_s / max(warmup_s, 1e-9))))


class NotTimed(Exception):  # noqa: N818 (a decision, not an error)
    """A call left out at this size on purpose; its message says why and where it is timed."""


def failure(err: BaseException) -> dict[str, Any]:
    """A row's status and message for a call that refused, crashed or was left out."""
    if isinstance(err, NotTimed):
        return {"status": "not timed", "message": str(err)}
    if isinstance(err, FisherMemoryError):
        return {
            "status": "refused",
            "message": str(err),
            "needed_bytes": err.needed,
            "budget_bytes": err.budget,
        }
    return {
        "status": "error",
        "message": f"{type(err).__name__}: {err}",
        "traceback": "".join(traceback.format_exception(err)),
    }


@dataclass
class TimedCall:
    """One call to time: the call, how its result is summarised, and its timings so far.

    Attributes:
        name: the row's name.
        fn: the call.
        describe: what the row keeps of the call's result (e.g. a curvature's bytes).
        adaptive: fewer repeats when the warm-up is slow (``repeats_for``).
        row: the row being built (name, status, warm-up time, summary, timings).
        repeats: timed calls decided by the warm-up (0: it failed).
        times: seconds of each timed call.
    """

    name: str
    fn: Callable[[], Any]
    describe: Callable[[Any], dict[str, Any]] = lambda _: {}
    adaptive: bool = True
    row: dict[str, Any] = field(default_factory=dict)
    repeats: int = 0
    times: list[float] = field(default_factory=list)

    def warm_up(self, repeats: int, sync: Callable[[], None]) -> None:
        """The untimed first call; decides the repeats, or records a refusal or crash."""
        self.row["name"] = self.name
        try:
            seconds, result = timed(self.fn, sync)
            summary = self.describe(result)
        except Exception as err:  # recorded, the run continues
            self.row.update(failure(err))
            return
        del result
        self.row.update(status="ok", warmup_s=seconds, **summary)
        self.repeats = repeats_for(seconds, repeats) if self.adaptive else repeats

    def finish(self) -> dict[str, Any]:
        """The row with its timings and their median."""
        if self.times:
            self.row.update(
                times_s=self.times,
                repeats=len(self.times),
                median_s=statistics.median(self.times),
                min_s=min(self.times),
            )
        return self.row


def interleaved_rounds(
    calls: list[TimedCall], floor: TimedCall, sync: Callable[[], None], tick: Callable[[], None]
) -> None:
    """Time the calls in rounds, in a fresh seeded order each, each right after a floor call.

    Every call gets its ``repeats`` timed calls; the floor gets one before each of them, so that
    both see the same machine load (the cores may be shared) and the ratio stays meaningful.
    """
    live = [c for c in calls if c.repeats > 0]
    for r in range(max((c.repeats for c in live), default=0)):
        for call in shuffled(live, r):
            if r >= call.repeats:
                continue
            floor.times.append(timed(floor.fn, sync)[0])
            call.times.append(timed(call.fn, sync)[0])
            tick()
    while len(floor.times) < floor.repeats:
        floor.times.append(timed(floor.fn, sync)[0])


class Steps(Protocol):
    """A training-step variant as ``interleaved_steps`` steps it (``workloads.Variant``)."""

    times: list[float]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One training step on the batch ``(x, y)``."""


def interleaved_steps(
    variants: Sequence[Steps],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    warmup: int,
    sync: Callable[[], None],
    tick: Callable[[str], None] | None = None,
) -> None:
    """Step every variant once per round, in a shuffled order; record times after ``warmup``.

    Round ``r`` uses batch ``r % len(batches)``. The order is a fresh seeded permutation each
    round (``shuffled``): a step's time depends on what ran just before it (a large penalty
    evicts the caches), so no variant may always follow the same one; the plain step in
    particular must not always follow the costliest. ``tick`` is called after each round.
    """
    for step in range(warmup + steps):
        x, y = batches[step % len(batches)]
        for variant in shuffled(variants, step):
            seconds, _ = timed(lambda v=variant, x=x, y=y: v.step(x, y), sync)
            if step >= warmup:
                variant.times.append(seconds)
        if tick is not None:
            tick(f"step {step + 1}")


# -- extra peak memory -------------------------------------------------------------------------


def proc_memory_unsupported() -> str | None:
    """Why the /proc high-water-mark method cannot be used here, or None when it can."""
    if not PROC_STATUS.exists():
        return f"{PROC_STATUS} does not exist (not Linux?)"
    try:
        CLEAR_REFS.write_text("5")
    except OSError as err:
        return f"cannot reset the peak: writing to {CLEAR_REFS} failed ({err.strerror or err})"
    return None


def read_status_bytes(field_name: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"{field_name} not in {PROC_STATUS}")


def proc_peak(fn: Callable[[], Any]) -> dict[str, Any]:
    """Extra peak resident memory of ``fn()``: VmHWM after minus VmRSS before (peak reset)."""
    gc.collect()
    CLEAR_REFS.write_text("5")
    before = read_status_bytes("VmRSS")
    result = fn()
    peak = read_status_bytes("VmHWM")
    del result
    return {"method": "proc", "extra_bytes": peak - before, "rss_before": before, "hwm": peak}


def cuda_peak(fn: Callable[[], Any]) -> dict[str, Any]:
    """Extra peak CUDA memory of ``fn()``: max allocated during it minus allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del result
    return {"method": "cuda", "extra_bytes": peak - before, "allocated_before": before}


def peak_extra(fn: Callable[[], Any], device: str) -> dict[str, Any]:
    """Extra peak memory of one call of ``fn``, measured in process (CUDA or /proc)."""
    if is_cuda(device):
        return {"method": "cuda", "extra_bytes": int(cuda_peak(fn)["extra_bytes"])}
    reason = proc_memory_unsupported()
    if reason is not None:
        return {"method": "n/a", "extra_bytes": None, "reason": reason}
    return {"method": "proc", "extra_bytes": int(proc_peak(fn)["extra_bytes"])}


# -- progress and environment ------------------------------------------------------------------


class Progress:
    """A tqdm bar on stderr, advanced one call (or round, or child) at a time."""

    def __init__(self, total: int, desc: str) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="call", file=sys.stderr)

    def tick(self, label: str = "") -> None:
        """Advance by one, showing ``label``."""
        if label:
            self.bar.set_postfix_str(label, refresh=False)
        self.bar.update()

    def grow(self, extra: int) -> None:
        """Add ``extra`` steps to the total."""
        self.bar.total += extra
        self.bar.refresh()

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()


def load_average() -> float | None:
    """The 1-minute load average (other processes competing for the cores), if known."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def warn_if_busy(load: float | None) -> None:
    """Say on stderr when other processes already keep the cores busy (noisy timings)."""
    cores = os.cpu_count() or 1
    if load is not None and load > 0.5 * cores:
        print(
            f"warning: 1-minute load average {load:g} on {cores} cores before starting: other "
            "processes compete for the CPU, timings (and their ratios) will be noisy",
            file=sys.stderr,
        )


def environment(device: str, command: str, load_start: float | None) -> dict[str, Any]:
    """Machine, versions, command, date and load for a timing or scaling record."""
    env: dict[str, Any] = provenance.machine(device)
    env.update(
        git_sha=provenance.git_sha(),
        command=command,
        date=provenance.now(),
        load_average_start=load_start,
        load_average_end=load_average(),
    )
    return env
