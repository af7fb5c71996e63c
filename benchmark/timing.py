"""Estimator timing: fit time, extra peak memory and EWC penalty cost on the tutorial network.

What is measured (``python -m benchmark timing``, see ``benchmark.cli``):

- For every estimator name and every N: the wall time of ``est.fit(model, x, y)`` on the first N
  MNIST training inputs (one warm-up call, then the median of ``repeats`` calls; fewer calls for
  an estimator whose warm-up alone is slow, marked in the table), the curvature's ``nbytes``,
  and the extra peak memory of one fit, measured in a fresh subprocess.
- Two references in the same run: the FLOOR, one batched forward + backward of the mean
  cross-entropy over the same N inputs, and the NAIVE loop, one forward + backward per input with
  squared gradients accumulated (the per-input empirical diagonal the slow obvious way; timed on
  at most ``NAIVE_MAX_INPUTS`` inputs and scaled linearly to N). After one warm-up call each, all
  rows are timed in interleaved rounds (a fresh seeded order each), each call right after a floor
  call: on shared cores, load then hits every row alike.
- The EWC penalty cost: one Adam training step at batch 100 with and without the harness's
  ``EWCPenalty`` (the gradient ``lam * F (theta - theta_old)`` of ``0.5 * lam *
  curv.quadratic(theta - theta_old)``, added after the backward), medians over many
  interleaved steps (each
  round in a fresh seeded order, so that no variant always follows the same one).

The model is ``tutorial-mlp`` in float32 with a seeded initialisation (``torch.manual_seed(0)``),
BatchNorm running statistics taken from a few hundred training inputs in train mode (no gradient),
then eval mode. Nothing is trained: the timings do not depend on the weights' values.

Extra peak memory (CPU): a child process (``python -m benchmark.timing --child SPEC``) loads the
data and the model, resets the kernel's high-water mark by writing ``5`` to
``/proc/self/clear_refs``, reads ``VmRSS`` from ``/proc/self/status``, fits, and reads ``VmHWM``;
extra = VmHWM after - VmRSS before. On CUDA: ``torch.cuda.max_memory_allocated`` in process.

The code is split into measuring (needs torch) and ``render_markdown(record)``, a pure function of
the JSON record, so that the report can be golden-tested.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import estimators
from estimators import FisherMemoryError

from . import provenance
from .data import DataNotFoundError, load_split, resolve_root
from .models import make_model
from .penalty import EWCPenalty

SCHEMA = "ewc-bench/timing/1"
MODEL = "tutorial-mlp"
DEFAULT_SIZES = (1000, 10000)
DEFAULT_REPEATS = 5
QUICK_SIZES = (200,)
QUICK_REPEATS = 1
QUICK_PENALTY_STEPS = 10
NAIVE_MAX_INPUTS = 1000
"""The naive loop runs on at most this many inputs; its time is scaled linearly to N."""
BN_WARMUP_INPUTS = 500
"""Training inputs run through the model in train mode to set BatchNorm's running statistics."""
BN_WARMUP_BATCH = 100
SLOW_BUDGET_S = 30.0
"""An estimator whose warm-up call takes longer gets fewer repeats, so that it spends about this."""
PENALTY_N = 1000
PENALTY_BATCH = 100
PENALTY_STEPS = 200
PENALTY_WARMUP_STEPS = 5
PENALTY_LAMBDA = 100.0
PENALTY_LR = 1e-3
PENALTY_ESTIMATORS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("identity", {}),
    ("diag-exact", {}),
    ("kfac-exact", {}),
    ("full-mc", {"representation": "factor"}),
)
CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATUS = Path("/proc/self/status")
CHILD_TIMEOUT_S = 900
MIB = 1024**2
SYNTHETIC_SEED = 0


class SetupError(ValueError):
    """The timing run cannot start as configured (unknown name, no CUDA, too few inputs)."""


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TimingConfig:
    """What one timing run measures and where it writes.

    Attributes:
        sizes: input counts N, one table each.
        repeats: timed calls per estimator after one warm-up (the median is reported).
        names: estimator names to time.
        device: ``cpu`` or ``cuda`` (already resolved from ``auto``).
        threads: ``torch.set_num_threads`` value, or None to leave torch's default.
        data_root: datasets root (torchvision layout); None resolves as ``data.resolve_root``.
        out: folder for ``timing.json`` and ``timing.md``.
        memory: measure extra peak memory (subprocesses on CPU).
        penalty_n: inputs the penalty curvatures are fitted on.
        penalty_steps: timed training steps per variant for the penalty cost.
        synthetic: random inputs of MNIST's shape instead of MNIST (tests).
        quick: the tiny test configuration was asked for.
        command: the command line, for the report.
        compare: also time BackPACK and nngeometry (where installed) against ours
            (``benchmark.compare``).
    """

    sizes: tuple[int, ...] = DEFAULT_SIZES
    repeats: int = DEFAULT_REPEATS
    names: tuple[str, ...] = ()
    device: str = "cpu"
    threads: int | None = None
    data_root: str | None = None
    out: Path = Path("reports")
    memory: bool = True
    penalty_n: int = PENALTY_N
    penalty_steps: int = PENALTY_STEPS
    synthetic: bool = False
    quick: bool = False
    command: str = ""
    compare: bool = True


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """Validate estimator names; keep ``estimators.names()`` order, drop duplicates.

    Raises:
        SetupError: for an unknown name, listing the valid ones.
    """
    valid = estimators.names()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise SetupError(
            f"unknown estimator name(s) {', '.join(map(repr, unknown))}; "
            f"valid names: {', '.join(valid)}"
        )
    return tuple(n for n in valid if n in set(names))


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``.

    Raises:
        SetupError: ``cuda`` asked for but not available, or an unknown device.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda: no CUDA device is available to torch")
    if device not in ("cpu", "cuda"):
        raise SetupError(f"device must be auto, cpu or cuda; got {device!r}")
    return device


def make_config(
    *,
    sizes: Sequence[int] | None = None,
    repeats: int | None = None,
    names: Sequence[str] | None = None,
    device: str = "auto",
    threads: int | None = None,
    data_root: str | None = None,
    out: str | os.PathLike[str] = "reports",
    memory: bool = True,
    penalty_steps: int | None = None,
    quick: bool = False,
    synthetic: bool = False,
    command: str = "",
    compare: bool = True,
) -> TimingConfig:
    """Build a ``TimingConfig``; ``quick`` supplies tiny defaults that explicit values override.

    Raises:
        SetupError: for an unknown name, a non-positive number, or an unavailable device.
    """
    sizes = tuple(sizes) if sizes else (QUICK_SIZES if quick else DEFAULT_SIZES)
    repeats = repeats if repeats is not None else (QUICK_REPEATS if quick else DEFAULT_REPEATS)
    steps = (
        penalty_steps
        if penalty_steps is not None
        else (QUICK_PENALTY_STEPS if quick else PENALTY_STEPS)
    )
    for label, value in [("size", s) for s in sizes] + [("repeats", repeats), ("steps", steps)]:
        if value < 1:
            raise SetupError(f"{label} must be a positive integer, got {value}")
    if threads is not None and threads < 1:
        raise SetupError(f"threads must be a positive integer, got {threads}")
    return TimingConfig(
        sizes=tuple(sorted(set(sizes))),
        repeats=repeats,
        names=check_names(names) if names else tuple(estimators.names()),
        device=resolve_device(device),
        threads=threads,
        data_root=None if data_root is None else str(data_root),
        out=Path(out),
        memory=memory,
        penalty_n=min(PENALTY_N, min(sizes)) if quick else PENALTY_N,
        penalty_steps=steps,
        synthetic=synthetic,
        quick=quick,
        command=command,
        compare=compare,
    )


# -- data and model ----------------------------------------------------------------------------


def synthetic_data(n: int, seed: int = SYNTHETIC_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniform random inputs ``[n, 1, 28, 28]`` and labels in [0, 10), reproducibly."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.rand(n, 1, 28, 28, generator=gen)
    return inputs, torch.randint(0, 10, (n,), generator=gen)


def load_data(n: int, data_root: str | None, synthetic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` MNIST training inputs and labels (or ``n`` synthetic ones), on CPU.

    Raises:
        DataNotFoundError: MNIST is missing under the data root.
        SetupError: MNIST has fewer than ``n`` training inputs.
    """
    if synthetic:
        return synthetic_data(n)
    split = load_split("mnist", train=True, root=data_root)
    if len(split) < n:
        raise SetupError(f"MNIST has {len(split):,} training inputs; asked for N = {n:,}")
    # New tensors (float32 in [0, 1] and a label copy), independent of the cached split.
    return split.float_inputs(torch.arange(n)), split.targets[:n].clone()


def data_description(config: TimingConfig) -> str:
    """One line saying which inputs were used."""
    if config.synthetic:
        return f"synthetic uniform inputs [N, 1, 28, 28] and random labels (seed {SYNTHETIC_SEED})"
    root = provenance.shown_data_root(resolve_root(config.data_root))
    return f"the first N MNIST training inputs ({root})"


def prepare_model(bn_inputs: torch.Tensor, device: str) -> nn.Module:
    """``tutorial-mlp`` seeded with 0, BatchNorm statistics from ``bn_inputs``, in eval mode.

    The running statistics are the plain average over batches of ``BN_WARMUP_BATCH`` inputs
    (momentum None while they are collected, then restored).
    """
    torch.manual_seed(0)
    model = make_model(MODEL).to(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for batch in bn_inputs.to(device).split(BN_WARMUP_BATCH):
            if batch.shape[0] > 1:
                model(batch)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


def bn_count(n_loaded: int) -> int:
    """How many of the loaded inputs set the BatchNorm statistics."""
    return min(BN_WARMUP_INPUTS, n_loaded)


# -- the reference computations ----------------------------------------------------------------


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The model's trainable parameters, in ``named_parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def floor_pass(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
    """The floor: one batched forward + backward of the mean cross-entropy over all inputs."""
    with torch.enable_grad():
        loss = F.cross_entropy(model(inputs), targets)
        return list(torch.autograd.grad(loss, trainable(model)))


def naive_diagonal(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> list[torch.Tensor]:
    """The slow obvious empirical diagonal: a Python loop, one forward + backward per input.

    Deliberately loops over inputs (the reference that the batched estimators must beat).
    """
    params = trainable(model)
    sums = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for i in range(inputs.shape[0]):
            loss = F.cross_entropy(model(inputs[i : i + 1]), targets[i : i + 1])
            for total, g in zip(sums, torch.autograd.grad(loss, params), strict=True):
                total.add_(g.square())
    return [s / inputs.shape[0] for s in sums]


def naive_inputs(n: int) -> int:
    """Inputs the naive loop actually runs on for N = ``n``."""
    return min(n, NAIVE_MAX_INPUTS)


# -- timing ------------------------------------------------------------------------------------


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for queued device work (a no-op on CPU)."""
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes (device work included), and its result."""
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def repeats_for(warmup_s: float, repeats: int, budget_s: float = SLOW_BUDGET_S) -> int:
    """``repeats``, or fewer (at least 1) when one call takes a large share of ``budget_s``."""
    return max(1, min(repeats, int(budget_s / max(warmup_s, 1e-9))))


def failure(err: BaseException) -> dict[str, Any]:
    """A row's status and message for an estimator that refused or crashed."""
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


def describe_curvature(curvature: estimators.Curvature) -> dict[str, Any]:
    """What the report keeps of a fitted curvature."""
    return {"nbytes": int(curvature.nbytes), "structure": curvature.structure}


def describe_tensors(tensors: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Bytes of a list of tensors (the naive loop's diagonal)."""
    return {"nbytes": sum(t.numel() * t.element_size() for t in tensors)}


@dataclass
class Task:
    """One thing to time: its call, how its result is summarised, and its timings so far."""

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


def estimator_task(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Task:
    """``est.fit(model, x, y)`` as a task; an error of ``estimators.make`` surfaces in the call."""
    try:
        est = estimators.make(name)
    except Exception as err:  # recorded by the warm-up, the run continues
        failed = err

        def fail() -> estimators.Curvature:
            raise failed

        return Task(name, fail, describe_curvature)
    return Task(name, lambda: est.fit(model, x, y), describe_curvature)


def naive_task(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Task:
    """The naive loop on ``naive_inputs(N)`` inputs."""
    m = naive_inputs(x.shape[0])
    return Task("naive", lambda: naive_diagonal(model, x[:m], y[:m]), describe_tensors)


def interleaved_rounds(
    tasks: list[Task], floor: Task, sync: Callable[[], None], tick: Callable[[], None]
) -> None:
    """Time the tasks in rounds, in a fresh seeded order each, each call right after a floor call.

    Every task gets its ``repeats`` timed calls; the floor gets one before each of them, so that
    both see the same machine load (the cores may be shared) and the ratio stays meaningful.
    """
    live = [t for t in tasks if t.repeats > 0]
    for r in range(max((t.repeats for t in live), default=0)):
        for task in shuffled(live, r):
            if r >= task.repeats:
                continue
            floor.times.append(timed(floor.fn, sync)[0])
            task.times.append(timed(task.fn, sync)[0])
            tick()
    while len(floor.times) < floor.repeats:
        floor.times.append(timed(floor.fn, sync)[0])


def scale_naive(row: dict[str, Any], n: int) -> dict[str, Any]:
    """The naive row with its median scaled linearly from the measured inputs to N = ``n``."""
    m = naive_inputs(n)
    row.update(measured_inputs=m, scale=n / m)
    if row.get("status") == "ok":
        row.update(measured_median_s=row["median_s"], median_s=row["median_s"] * n / m)
    return row


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


@dataclass(frozen=True)
class ChildSpec:
    """What one memory-measuring child process fits: ``kind`` is estimator, floor or naive."""

    kind: str
    n: int
    n_loaded: int
    name: str = ""
    threads: int | None = None
    data_root: str | None = None
    synthetic: bool = False


def child_workload(
    spec: ChildSpec, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> Callable[[], Any]:
    """The call whose extra peak memory a child measures."""
    x, y = inputs[: spec.n], targets[: spec.n]
    if spec.kind == "floor":
        return lambda: floor_pass(model, x, y)
    if spec.kind == "naive":
        m = naive_inputs(spec.n)
        return lambda: naive_diagonal(model, x[:m], y[:m])
    est = estimators.make(spec.name)
    return lambda: est.fit(model, x, y)


def run_child(spec: ChildSpec) -> dict[str, Any]:
    """In the child: load data and model, warm autograd on two inputs, measure one call."""
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    inputs, targets = load_data(spec.n_loaded, spec.data_root, spec.synthetic)
    model = prepare_model(inputs[: bn_count(spec.n_loaded)], "cpu")
    floor_pass(model, inputs[:2], targets[:2])
    fn = child_workload(spec, model, inputs, targets)
    reason = proc_memory_unsupported()
    if reason is not None:
        return {"extra_bytes": None, "reason": reason}
    try:
        return proc_peak(fn)
    except Exception as err:
        return {"extra_bytes": None, "reason": f"the fit failed: {type(err).__name__}: {err}"}


def child_command(spec: ChildSpec) -> list[str]:
    """The command line that runs ``spec`` in a fresh interpreter."""
    return [sys.executable, "-m", "benchmark.timing", "--child", json.dumps(asdict(spec))]


def measure_in_child(spec: ChildSpec, timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run ``spec`` in a fresh subprocess; its last stdout line is the JSON result."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            child_command(spec),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=root,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"extra_bytes": None, "reason": f"child timed out after {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"extra_bytes": None, "reason": f"child exited {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def memory_method(config: TimingConfig) -> dict[str, Any]:
    """How extra peak memory is measured in this run, or why it is not."""
    if not config.memory:
        return {"method": "off", "reason": "not measured (--no-memory)"}
    if config.device == "cuda":
        return {"method": "cuda", "reason": None}
    reason = proc_memory_unsupported()
    if reason is not None:
        return {"method": "n/a", "reason": reason}
    return {"method": "proc", "reason": None}


class MemoryProbe:
    """Measures one row's extra peak memory the way ``memory_method`` chose."""

    def __init__(self, config: TimingConfig, n_loaded: int, method: dict[str, Any]) -> None:
        self.config = config
        self.n_loaded = n_loaded
        self.method = method

    def measure(self, kind: str, name: str, n: int, call: Callable[[], Any]) -> dict[str, Any]:
        """Extra peak bytes of one call: ``call`` in process (CUDA), else a fresh child."""
        how = self.method["method"]
        if how == "cuda":
            try:
                return cuda_peak(call)
            except Exception as err:
                return {"extra_bytes": None, "reason": f"{type(err).__name__}: {err}"}
        if how != "proc":
            return {"extra_bytes": None, "reason": self.method["reason"]}
        spec = ChildSpec(
            kind=kind,
            n=n,
            n_loaded=self.n_loaded,
            name=name,
            threads=self.config.threads,
            data_root=self.config.data_root,
            synthetic=self.config.synthetic,
        )
        return measure_in_child(spec)


# -- the penalty cost --------------------------------------------------------------------------


@dataclass
class Variant:
    """One training setup for the penalty comparison: its own model copy and optimizer."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    penalty: Callable[[], None] | None = None
    times: list[float] = field(default_factory=list)


def make_variant(
    name: str, base: nn.Module, curvature: estimators.Curvature | None, lam: float
) -> Variant:
    """A copy of ``base`` in train mode with Adam; with ``curvature``, the EWC penalty added."""
    model = copy.deepcopy(base).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=PENALTY_LR)
    if curvature is None:
        return Variant(name, model, optimizer)
    ewc = EWCPenalty(lam)  # the harness's own penalty: what a training step really pays
    ewc.consolidate(model, curvature)
    return Variant(name, model, optimizer, lambda: ewc.add_gradients(model))


def train_step(variant: Variant, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Forward, cross-entropy, backward (+ the penalty's gradient, as the harness adds it), Adam."""
    variant.optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(variant.model(inputs), targets).backward()
    if variant.penalty is not None:
        variant.penalty()
    variant.optimizer.step()


def shuffled(items: Sequence[Any], round_index: int, seed: int = 0) -> list[Any]:
    """``items`` in a permutation fixed by (``seed``, ``round_index``): reproducible, varied."""
    order = list(items)
    random.Random(seed * 1_000_003 + round_index).shuffle(order)
    return order


def interleaved_steps(
    variants: list[Variant],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    warmup: int,
    sync: Callable[[], None],
) -> None:
    """Step every variant once per round, in a shuffled order; record times after ``warmup``.

    The order is a fresh seeded permutation each round (``shuffled``): a step's time depends on
    what ran just before it (a large penalty evicts the caches), so no variant may always follow
    the same one; the plain step in particular must not always follow the costliest.
    """
    for step in range(warmup + steps):
        x, y = batches[step % len(batches)]
        for variant in shuffled(variants, step):
            seconds, _ = timed(lambda v=variant, x=x, y=y: train_step(v, x, y), sync)
            if step >= warmup:
                variant.times.append(seconds)


def fit_penalty_curvatures(
    names: Sequence[str], model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> list[tuple[dict[str, Any], estimators.Curvature | None]]:
    """Fit each penalty estimator (with its options); failures become rows without curvature."""
    fitted = []
    for name, options in PENALTY_ESTIMATORS:
        if name not in names:
            continue
        row: dict[str, Any] = {"name": name, "options": dict(options)}
        try:
            curvature = estimators.make(name, **options).fit(model, inputs, targets)
        except Exception as err:  # recorded, the run continues
            row.update(failure(err))
            fitted.append((row, None))
            continue
        row.update(status="ok", structure=curvature.structure, nbytes=int(curvature.nbytes))
        fitted.append((row, curvature))
    return fitted


def measure_penalty(
    config: TimingConfig, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> dict[str, Any]:
    """Training-step time with and without each estimator's EWC penalty, interleaved."""
    x, y = inputs[: config.penalty_n], targets[: config.penalty_n]
    fitted = fit_penalty_curvatures(config.names, model, x, y)
    plain = make_variant("plain", model, None, PENALTY_LAMBDA)
    variants = [plain] + [
        make_variant(row["name"], model, curv, PENALTY_LAMBDA)
        for row, curv in fitted
        if curv is not None
    ]
    batches = list(zip(x.split(PENALTY_BATCH), y.split(PENALTY_BATCH), strict=True))
    batches = [b for b in batches if b[0].shape[0] > 1] or batches
    warmup = min(PENALTY_WARMUP_STEPS, config.penalty_steps)
    interleaved_steps(variants, batches, config.penalty_steps, warmup, synchronizer(config.device))
    plain_s = statistics.median(plain.times)
    by_name = {v.name: v for v in variants[1:]}
    rows = []
    for row, _ in fitted:
        variant = by_name.get(row["name"])
        if variant is not None:
            median = statistics.median(variant.times)
            row.update(
                times_s=variant.times, median_s=median, overhead_pct=overhead(median, plain_s)
            )
        rows.append(row)
    return {
        "n": x.shape[0],
        "batch_size": PENALTY_BATCH,
        "steps": config.penalty_steps,
        "warmup_steps": warmup,
        "lam": PENALTY_LAMBDA,
        "optimizer": f"Adam(lr={PENALTY_LR:g})",
        "plain": {"times_s": plain.times, "median_s": plain_s},
        "rows": rows,
    }


def overhead(step_s: float, plain_s: float) -> float:
    """Percentage by which ``step_s`` exceeds ``plain_s``."""
    return 100.0 * (step_s / plain_s - 1.0)


# -- one size ----------------------------------------------------------------------------------


class Progress:
    """A tqdm bar (or nothing when tqdm is missing) advanced one call or child at a time."""

    def __init__(self, total: int, desc: str) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a declared dependency
            self.bar = None
            return
        self.bar = tqdm(total=total, desc=desc, unit="call", file=sys.stderr)

    def tick(self, label: str = "") -> None:
        """Advance by one, showing ``label``."""
        if self.bar is not None:
            if label:
                self.bar.set_postfix_str(label, refresh=False)
            self.bar.update()

    def grow(self, extra: int) -> None:
        """Add ``extra`` steps to the total."""
        if self.bar is not None:
            self.bar.total += extra
            self.bar.refresh()

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()


def ratios(row: dict[str, Any], floor_s: float | None, naive_s: float | None) -> dict[str, Any]:
    """``x_floor`` (time / floor) and ``naive_over_time`` (naive / time) for a timed row."""
    t = row.get("median_s")
    if row.get("status") != "ok" or t is None:
        return {"x_floor": None, "naive_over_time": None}
    return {
        "x_floor": t / floor_s if floor_s else None,
        "naive_over_time": naive_s / t if naive_s and t > 0 else None,
    }


def time_size(
    config: TimingConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[Task, Task, list[Task]]:
    """Warm up every task once, then time them in interleaved rounds against the floor."""
    sync = synchronizer(config.device)
    floor = Task("floor", lambda: floor_pass(model, x, y), adaptive=False)
    naive = naive_task(model, x, y)
    fits = [estimator_task(name, model, x, y) for name in config.names]
    tasks = [naive, *fits]
    bar = Progress(len(tasks), f"N={x.shape[0]:,} timing")
    floor.warm_up(config.repeats, sync)
    for task in tasks:
        task.warm_up(config.repeats, sync)
        bar.tick(task.name)
    bar.grow(sum(t.repeats for t in tasks))
    interleaved_rounds(tasks, floor, sync, bar.tick)
    bar.close()
    return floor, naive, fits


def add_memory(tasks: Sequence[Task], probe: MemoryProbe, n: int) -> None:
    """Each successful row's extra peak memory (one child process each on CPU)."""
    bar = Progress(len(tasks), f"N={n:,} memory")
    for task in tasks:
        row = task.row
        kind = row["name"] if row["name"] in ("floor", "naive") else "estimator"
        if row.get("status") == "ok":
            row["memory"] = probe.measure(kind, row["name"], n, task.fn)
        else:
            row["memory"] = {"extra_bytes": None, "reason": "the fit did not succeed"}
        bar.tick(row["name"])
    bar.close()


def measure_size(
    config: TimingConfig,
    n: int,
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    probe: MemoryProbe,
) -> dict[str, Any]:
    """Floor, naive loop and every estimator at N = ``n``: times, memory, ratios."""
    x, y = inputs[:n], targets[:n]
    floor_task, naive_task_, fit_tasks = time_size(config, model, x, y)
    add_memory([floor_task, naive_task_, *fit_tasks], probe, n)
    floor = floor_task.finish()
    naive = scale_naive(naive_task_.finish(), n)
    rows = [t.finish() for t in fit_tasks]
    for row in [floor, naive, *rows]:
        row.update(ratios(row, floor.get("median_s"), naive.get("median_s")))
    return {"n": n, "floor": floor, "naive": naive, "estimators": rows}


# -- environment -------------------------------------------------------------------------------


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
    """Machine, versions, command, date and load for a timing or scaling report."""
    env: dict[str, Any] = provenance.machine(device)
    env.update(
        git_sha=provenance.git_sha(),
        command=command,
        date=provenance.now(),
        load_average_start=load_start,
        load_average_end=load_average(),
    )
    return env


# -- the whole run -----------------------------------------------------------------------------


def run_timing(config: TimingConfig) -> dict[str, Any]:
    """Measure everything ``config`` asks for and return the JSON-ready record.

    Raises:
        DataNotFoundError: MNIST is missing (unless ``config.synthetic``).
        SetupError: too few inputs.
    """
    load_start = load_average()
    warn_if_busy(load_start)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    n_loaded = max(*config.sizes, config.penalty_n)
    inputs, targets = load_data(n_loaded, config.data_root, config.synthetic)
    model = prepare_model(inputs[: bn_count(n_loaded)], config.device)
    inputs, targets = inputs.to(config.device), targets.to(config.device)
    method = memory_method(config)
    probe = MemoryProbe(config, n_loaded, method)
    sizes = [measure_size(config, n, model, inputs, targets, probe) for n in config.sizes]
    wanted = any(name in config.names for name, _ in PENALTY_ESTIMATORS)
    penalty = measure_penalty(config, model, inputs, targets) if wanted else None
    compare = None
    if config.compare:
        from .compare import measure_compare

        compare = measure_compare(min(config.sizes), inputs, targets, config.repeats, config.device)
    return {
        "schema": SCHEMA,
        "environment": environment(config.device, config.command, load_start),
        "settings": {
            "model": MODEL,
            "parameters": sum(p.numel() for p in trainable(model)),
            "dtype": "float32",
            "data": data_description(config),
            "bn_warmup_inputs": bn_count(n_loaded),
            "sizes": list(config.sizes),
            "repeats": config.repeats,
            "slow_budget_s": SLOW_BUDGET_S,
            "naive_max_inputs": NAIVE_MAX_INPUTS,
            "memory": method,
            "quick": config.quick,
        },
        "sizes": sizes,
        "penalty": penalty,
        "compare": compare,
    }


def write_reports(record: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``timing.json`` and ``timing.md`` into ``out``; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "timing.json", out / "timing.md"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    md_path.write_text(render_markdown(record))
    return json_path, md_path


# -- Markdown (pure) ---------------------------------------------------------------------------


def fmt_ms(seconds: float) -> str:
    """Milliseconds with about three significant digits."""
    ms = seconds * 1000
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def fmt_ratio(r: float | None) -> str:
    """A ratio with about three significant digits (``—`` when undefined)."""
    if r is None:
        return "—"
    if r >= 100:
        return f"{r:,.0f}"
    if r >= 10:
        return f"{r:.1f}"
    if r >= 0.1:
        return f"{r:.2f}"
    return f"{r:.3f}"


def fmt_bytes(n: int) -> str:
    """Bytes for people: ``3.4 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def cell(text: str, limit: int = 160) -> str:
    """Text safe for one Markdown table cell (no pipes or newlines), shortened to ``limit``."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def memory_cell(memory: dict[str, Any] | None) -> str:
    """Extra peak MiB, or ``n/a``."""
    if not memory or memory.get("extra_bytes") is None:
        return "n/a"
    return f"{memory['extra_bytes'] / MIB:.1f}"


def status_cell(row: dict[str, Any]) -> str:
    """What a failed row shows instead of a time."""
    if row["status"] == "refused":
        return cell(
            f"refused: needs {fmt_bytes(row['needed_bytes'])} "
            f"(budget {fmt_bytes(row['budget_bytes'])})"
        )
    return cell(row["message"])


def time_cell(row: dict[str, Any], repeats: int) -> str:
    """Median milliseconds, with a dagger when fewer repeats than configured were timed."""
    text = fmt_ms(row["median_s"])
    return text + " †" if row.get("repeats", repeats) < repeats else text


def fit_row(row: dict[str, Any], label: str, floor_s: float, naive_s: float, repeats: int) -> str:
    """One table row for an estimator (or a reference)."""
    if row["status"] != "ok":
        return f"| {label} | {status_cell(row)} | — | — | — | — |"
    r = ratios(row, floor_s, naive_s)
    nbytes = row.get("nbytes")
    return (
        f"| {label} | {time_cell(row, repeats)} | {fmt_ratio(r['x_floor'])} | "
        f"{fmt_ratio(r['naive_over_time'])} | {memory_cell(row.get('memory'))} | "
        f"{'—' if nbytes is None else f'{nbytes:,}'} |"
    )


def size_notes(size: dict[str, Any], repeats: int, memory_reason: str | None) -> list[str]:
    """Footnotes under one size's table."""
    naive = size["naive"]
    notes = []
    if naive.get("scale", 1.0) != 1.0:
        notes.append(
            f"Naive loop timed on the first {naive['measured_inputs']:,} inputs "
            f"({fmt_ms(naive['measured_median_s'])} ms) and scaled linearly by "
            f"{naive['scale']:g} to N = {size['n']:,}; its memory is for "
            f"{naive['measured_inputs']:,} inputs, its bytes are the accumulated diagonal."
        )
    fewer = [
        f"{r['name']} ({r['repeats']})"
        for r in [size["naive"], *size["estimators"]]
        if r["status"] == "ok" and r.get("repeats", repeats) < repeats
    ]
    if fewer:
        notes.append(
            f"† median of fewer than {repeats} repeats (slow warm-up): " + ", ".join(fewer) + "."
        )
    return notes + memory_notes(size, memory_reason)


def memory_notes(size: dict[str, Any], memory_reason: str | None) -> list[str]:
    """One note per unexpected reason for a missing memory figure, naming the rows."""
    names: dict[str, list[str]] = {}
    for r in [size["floor"], size["naive"], *size["estimators"]]:
        memory = r.get("memory") or {}
        reason = memory.get("reason")
        if memory.get("extra_bytes") is None and reason not in (
            None,
            memory_reason,
            "the fit did not succeed",
        ):
            names.setdefault(reason, []).append(r["name"])
    return [
        f"Memory n/a for {', '.join(rows)}: {cell(reason, 300)}"
        for reason, rows in sorted(names.items())
    ]


def size_section(size: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The table (and notes) for one N."""
    repeats = settings["repeats"]
    floor_s, naive_s = size["floor"]["median_s"], size["naive"]["median_s"]
    lines = [
        f"## N = {size['n']:,}",
        "",
        "| estimator | time (ms) | x floor | naive / time | extra peak MiB | curvature bytes |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        fit_row(size["floor"], "*floor* (batched forward + backward)", floor_s, naive_s, repeats),
        fit_row(size["naive"], "*naive loop* (per-input backward)", floor_s, naive_s, repeats),
    ]
    lines += [fit_row(r, r["name"], floor_s, naive_s, repeats) for r in size["estimators"]]
    notes = size_notes(size, repeats, settings["memory"].get("reason"))
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return [*lines, ""]


def penalty_section(penalty: dict[str, Any] | None) -> list[str]:
    """The EWC penalty-overhead table."""
    if not penalty:
        return []
    lines = [
        "## EWC penalty cost per training step",
        "",
        f"One training step of {MODEL} (train mode) at batch {penalty['batch_size']}: forward, "
        f"cross-entropy, backward, {penalty['optimizer']} step; with the penalty "
        "the harness's penalty `0.5 * lam * (theta - theta_old)^T F (theta - theta_old)`, "
        "entering through its gradient `lam * F (theta - theta_old)` added after the backward "
        f"(lam = "
        f"{penalty['lam']:g}), curvatures fitted on N = {penalty['n']:,}. Median over "
        f"{penalty['steps']:,} steps per variant, all variants interleaved in one loop, every "
        f"round in a fresh seeded order (after {penalty['warmup_steps']} warm-up rounds).",
        "",
        "| estimator | representation | curvature bytes | step (ms) | overhead |",
        "| --- | --- | ---: | ---: | ---: |",
        f"| *plain* (no penalty) | — | — | {fmt_ms(penalty['plain']['median_s'])} | — |",
    ]
    for row in penalty["rows"]:
        label = row["name"] + "".join(f", {k}={v}" for k, v in row.get("options", {}).items())
        if row["status"] != "ok":
            lines.append(f"| {label} | {status_cell(row)} | — | — | — |")
            continue
        lines.append(
            f"| {label} | {row['structure']} | {row['nbytes']:,} | {fmt_ms(row['median_s'])} | "
            f"{row['overhead_pct']:+.1f}% |"
        )
    return [*lines, ""]


def header_section(record: dict[str, Any]) -> list[str]:
    """Title, machine, versions, command, date and the method."""
    env, s = record["environment"], record["settings"]
    machine = f"{env['platform']}; CPU: {env['cpu']} ({env['cores']} cores)"
    if env.get("gpu"):
        machine += f"; GPU: {env['gpu']}"
    memory = s["memory"]
    if memory["method"] == "proc":
        mem_text = (
            "VmHWM after the fit minus VmRSS before it, in a fresh process per row "
            "(peak reset through /proc/self/clear_refs after loading data and model)"
        )
    elif memory["method"] == "cuda":
        mem_text = "torch.cuda.max_memory_allocated during the fit minus allocated before"
    else:
        mem_text = f"n/a: {memory['reason']}"
    repeats = s["repeats"]
    load = " -> ".join(
        "n/a" if v is None else f"{v:g}"
        for v in (env.get("load_average_start"), env.get("load_average_end"))
    )
    return [
        "# Estimator timing",
        "",
        "Generated by `python -m benchmark timing` (benchmark/timing.py); "
        "raw numbers in timing.json. How the costs grow with N, model size, classes and past "
        "tasks, and where the dense Fisher stops fitting: [scaling.md](scaling.md).",
        "",
        f"- Machine: {machine}; device {env['device']}; torch threads {env['torch_threads']}; "
        f"1-minute load average {load} (start -> end)",
        f"- Versions: Python {env['python']}, torch {env['torch']}; "
        f"git {env.get('git_sha') or 'n/a'}",
        f"- Command: `{env['command']}`",
        f"- Date: {env['date']}",
        f"- Model: {s['model']} ({s['parameters']:,} parameters, {s['dtype']}, seeded init, "
        f"BatchNorm statistics from {s['bn_warmup_inputs']:,} training inputs, eval mode); "
        f"inputs: {s['data']}",
        f"- Time: median of {repeats} call{'s' if repeats != 1 else ''} after one warm-up "
        f"(fewer, marked †, when the warm-up exceeds {s['slow_budget_s'] / repeats:g} s); "
        "x floor = time / floor, naive / time = naive loop / time",
        "- Floor: one batched forward + backward of the mean cross-entropy over the same N "
        "inputs (all parameters), timed right before every timed call of the other rows, which "
        "run in interleaved rounds in a fresh seeded order each, so that all see the same machine "
        "load and none always follows the same row; "
        "naive loop: one forward + backward per input, squared gradients accumulated",
        f"- Extra peak memory: {mem_text}",
        "",
    ]


def render_markdown(record: dict[str, Any]) -> str:
    """The Markdown report for a timing record (pure: same record, same text)."""
    lines = header_section(record)
    for size in record["sizes"]:
        lines += size_section(size, record["settings"])
    lines += penalty_section(record.get("penalty"))
    from .compare import compare_section

    lines += compare_section(record.get("compare"))
    return "\n".join(lines).rstrip("\n") + "\n"


# -- child entry point -------------------------------------------------------------------------


def child_main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmark.timing --child SPEC``: print one JSON line with the measurement."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.timing",
        description="Internal: measure one fit's extra peak memory in a fresh process. "
        "Use `python -m benchmark timing` instead.",
    )
    parser.add_argument("--child", required=True, help="JSON ChildSpec")
    args = parser.parse_args(argv)
    spec = ChildSpec(**json.loads(args.child))
    try:
        result = run_child(spec)
    except (DataNotFoundError, SetupError) as err:
        result = {"extra_bytes": None, "reason": str(err)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
