r"""Scaling: what each estimator costs as the data, the model, the classes and the tasks grow.

``python -m benchmark scaling`` (``make scaling``) measures, on seeded synthetic inputs (the cost
of a fit does not depend on the pixel values, so no dataset is needed):

- **vs N**: fit time and memory of each estimator on the tutorial network (784-100-100-10 with
  BatchNorm, P = 89,610) for N inputs, beside the FLOOR (one batched forward + backward of the mean
  loss on the same N inputs), timed in the same interleaved rounds;
- **vs width and depth**: the same on plain ReLU MLPs 784-h-h-10 for hidden widths h, and
  784-h-...-10 with a fixed width and a growing number of hidden layers (P grows as ~h^2 and
  linearly in depth);
- **vs classes C**: MLP 784-100-100-C; ``exact`` costs grow with C (one column of the Fisher factor
  per class), ``mc`` and ``empirical`` do not;
- **penalty vs past tasks**: the extra time per training step (batch 100, Adam) of the EWC penalty
  after T tasks, separate mode (one quadratic per past task: linear in T) against online mode
  (one accumulated curvature: flat in T); all variants step in every round, in a fresh seeded
  order each round (a step after a large penalty finds cold caches: with a fixed order the plain
  step always followed the costliest variant and the small overheads came out near zero);
- **where the dense Fisher stops fitting**: P at which P^2 floats exceed the memory budget, against
  the bytes of the low-rank factor (rows x P) — computed, and checked against the ``nbytes`` of the
  full-Fisher fits of the width sweep (``full-mc`` picks dense where it fits, else the factor);
- **time split of whole runs**: training, penalty, estimation and evaluation seconds of the
  harness's runs, read from a sweep's records when ``--results`` is given.

Timing: each point gets one warm-up call, then ``repeats`` rounds in which every estimator of the
point and the floor are called in a fresh seeded order (load on shared cores then hits all alike);
the median is reported, with its ratio to the floor's median of the same rounds. Memory:
``nbytes`` of the fitted curvature, and the extra peak resident memory of one more call, measured
in process
(the kernel's high-water mark is reset through ``/proc/self/clear_refs`` before the call; on CUDA,
``torch.cuda.max_memory_allocated``). Rendering lives in ``benchmark.scaling_report``.
"""

from __future__ import annotations

import copy
import gc
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import estimators
from estimators.curvature import DEFAULT_MEMORY_BUDGET

from .models import INPUT_PIXELS, mlp, n_parameters, tutorial_mlp
from .penalty import EWCPenalty
from .timing import (
    Progress,
    environment,
    failure,
    floor_pass,
    load_average,
    proc_memory_unsupported,
    proc_peak,
    shuffled,
    synchronizer,
    timed,
    warn_if_busy,
)

SCHEMA = "ewc-bench/scaling/1"
SEED = 0
FLOAT_BYTES = 4
PENALTY_BATCH = 100
PENALTY_LAMBDA = 100.0
PENALTY_FIT_N = 1000
PENALTY_FULL_ROWS = 200
"""Factor rows of the full Fisher in the penalty study (the harness's default protocol)."""
BN_WARMUP = 500


class ScalingError(ValueError):
    """A scaling configuration that cannot run (bad sizes, unknown estimator names)."""


@dataclass(frozen=True)
class ScalingConfig:
    """What to measure; ``quick()`` gives a tiny version for tests.

    Attributes:
        n_values: input counts for the N sweep (tutorial network).
        n_estimators: estimators of the N sweep.
        widths: hidden widths of the MLP 784-h-h-10 (width sweep, at ``size_n`` inputs).
        depths: hidden-layer counts of the MLP at ``depth_width`` (depth sweep).
        size_estimators: estimators of the width and depth sweeps.
        classes: output counts of the MLP 784-100-100-C (class sweep, at ``size_n`` inputs).
        class_estimators: estimators of the class sweep.
        past_tasks: numbers of past tasks T in the penalty study.
        penalty_estimators: estimators in the penalty study (online mode where defined).
        penalty_steps: timed training steps per penalty variant (after 5 warm-up steps).
        repeats: timed rounds per point.
        memory_budget: the full-Fisher budget in bytes (the dense limit's line).
        memory: measure extra peak memory (one more call per row).
        results: a sweep's results folder for the time split, or None.
    """

    n_values: tuple[int, ...] = (100, 300, 1000, 3000, 10000)
    n_estimators: tuple[str, ...] = ("diag-empirical", "diag-exact", "kfac-exact", "full-mc")
    widths: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)
    depths: tuple[int, ...] = (1, 2, 4, 8)
    depth_width: int = 256
    size_n: int = 1000
    size_estimators: tuple[str, ...] = ("diag-exact", "kfac-exact", "full-mc")
    classes: tuple[int, ...] = (2, 10, 50, 100)
    class_estimators: tuple[str, ...] = (
        "diag-empirical",
        "diag-mc",
        "diag-exact",
        "kfac-mc",
        "kfac-exact",
    )
    past_tasks: tuple[int, ...] = (1, 2, 4, 8, 16)
    penalty_estimators: tuple[str, ...] = ("diag-exact", "kfac-exact", "full-mc")
    penalty_steps: int = 40
    repeats: int = 3
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    memory: bool = True
    device: str = "cpu"
    threads: int | None = None
    results: str | None = None
    command: str = ""
    quick: bool = False

    def __post_init__(self) -> None:
        for field_name in ("n_values", "widths", "depths", "classes", "past_tasks"):
            values = getattr(self, field_name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise ScalingError(f"{field_name} must be positive integers, got {values!r}")
        if min(self.classes) < 2:
            raise ScalingError(f"classes must be >= 2, got {self.classes!r}")
        for field_name in ("size_n", "depth_width", "penalty_steps", "repeats", "memory_budget"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ScalingError(f"{field_name} must be a positive integer, got {value!r}")
        known = set(estimators.names())
        for field_name in (
            "n_estimators",
            "size_estimators",
            "class_estimators",
            "penalty_estimators",
        ):
            bad = [n for n in getattr(self, field_name) if n not in known]
            if bad:
                raise ScalingError(
                    f"unknown estimator name(s) in {field_name}: {', '.join(bad)}; "
                    f"valid: {', '.join(sorted(known))}"
                )


def quick_config(**overrides: Any) -> ScalingConfig:
    """A configuration that runs end to end in seconds (tests, smoke runs)."""
    settings: dict[str, Any] = dict(
        n_values=(20, 40),
        n_estimators=("diag-exact", "kfac-exact", "full-mc"),
        widths=(4, 8),
        depths=(1, 2),
        depth_width=8,
        size_n=20,
        size_estimators=("diag-exact", "kfac-exact", "full-mc"),
        classes=(2, 5),
        class_estimators=("diag-mc", "diag-exact"),
        past_tasks=(1, 3),
        penalty_estimators=("diag-exact", "kfac-exact", "full-mc"),
        penalty_steps=3,
        repeats=1,
        quick=True,
    )
    settings.update(overrides)
    return ScalingConfig(**settings)


# -- data and models ---------------------------------------------------------------------------


def synthetic(n: int, classes: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs ``[n, 1, 28, 28]`` in [0, 1) and labels in ``[0, classes)``."""
    g = torch.Generator().manual_seed(SEED)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x.to(device), y.to(device)


def seeded(build: Callable[[], nn.Module], device: str) -> nn.Module:
    """``build()`` under a fixed seed, moved to ``device``, in eval mode."""
    torch.manual_seed(SEED)
    return build().to(device).eval()


def tutorial_network(device: str) -> nn.Module:
    """The tutorial network with BatchNorm statistics from synthetic inputs, in eval mode."""
    model = seeded(tutorial_mlp, device).train()
    x, _ = synthetic(BN_WARMUP, 10, device)
    with torch.no_grad():
        for chunk in x.split(100):
            model(chunk)
    return model.eval()


def dense_limit(budget: int, itemsize: int = FLOAT_BYTES) -> int:
    """The largest P whose dense P x P Fisher fits in ``budget`` bytes: floor(sqrt(budget / s))."""
    return math.isqrt(budget // itemsize)


# -- one point: several estimators and the floor, interleaved ---------------------------------


def peak_extra(fn: Callable[[], Any], device: str) -> dict[str, Any]:
    """Extra peak memory of one call of ``fn``, measured in process."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        del result
        return {"method": "cuda", "extra_bytes": int(extra)}
    reason = proc_memory_unsupported()
    if reason is not None:
        return {"method": "n/a", "extra_bytes": None, "reason": reason}
    out = proc_peak(fn)
    return {"method": "proc", "extra_bytes": int(out["extra_bytes"])}


def measure_point(
    config: ScalingConfig,
    names: Sequence[str],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    progress: Progress,
) -> list[dict[str, Any]]:
    """Rows for ``names`` plus ``floor`` on one (model, inputs): times, bytes, memory."""
    sync = synchronizer(config.device)
    calls: dict[str, Callable[[], Any]] = {"floor": lambda: floor_pass(model, x, y)}
    rows: dict[str, dict[str, Any]] = {"floor": {"estimator": "floor", "status": "ok"}}
    for name in names:
        est = estimators.make(name, memory_budget=config.memory_budget)
        rows[name] = {"estimator": name}
        try:
            seconds, curv = timed(lambda e=est: e.fit(model, x, y), sync)
        except Exception as err:  # a refusal or failure is a result, the sweep goes on
            rows[name].update(failure(err))
            rows[name].pop("traceback", None)
            progress.tick(name)
            if config.memory:
                progress.tick(f"{name}: no memory to measure")
            continue
        rows[name].update(
            status="ok",
            warmup_s=seconds,
            nbytes=int(curv.nbytes),
            structure=curv.structure,
        )
        del curv
        calls[name] = lambda e=est: e.fit(model, x, y)
        progress.tick(name)
    calls["floor"]()  # warm-up of the floor
    order = list(calls)
    times: dict[str, list[float]] = {k: [] for k in order}
    for r in range(config.repeats):
        for key in shuffled(order, r):
            seconds, result = timed(calls[key], sync)
            del result
            times[key].append(seconds)
        progress.tick(f"round {r + 1}")
    floor_s = statistics.median(times["floor"])
    for key in order:
        median = statistics.median(times[key])
        rows[key].update(times_s=times[key], median_s=median, x_floor=median / floor_s)
        if config.memory:
            gc.collect()
            rows[key]["memory"] = peak_extra(calls[key], config.device)
            progress.tick(f"memory {key}")
    return list(rows.values())


def point_ticks(config: ScalingConfig, names: Sequence[str]) -> int:
    """Progress steps of one point."""
    return len(names) + config.repeats + (len(names) + 1 if config.memory else 0)


# -- the sweeps --------------------------------------------------------------------------------


def sweep_n(config: ScalingConfig, progress: Progress) -> list[dict[str, Any]]:
    """Rows of the N sweep on the tutorial network."""
    model = tutorial_network(config.device)
    x_all, y_all = synthetic(max(config.n_values), 10, config.device)
    points = []
    for n in config.n_values:
        rows = measure_point(config, config.n_estimators, model, x_all[:n], y_all[:n], progress)
        points.append({"n": n, "parameters": n_parameters(model), "rows": rows})
    return points


def sweep_models(
    config: ScalingConfig,
    progress: Progress,
    axis: str,
    values: Sequence[int],
    build: Callable[[int], nn.Module],
    names: Sequence[str],
    classes: Callable[[int], int],
) -> list[dict[str, Any]]:
    """Rows of a sweep over models: ``build(value)`` on ``size_n`` inputs of ``classes(value)``."""
    points = []
    for value in values:
        model = seeded(lambda v=value: build(v), config.device)
        x, y = synthetic(config.size_n, classes(value), config.device)
        rows = measure_point(config, names, model, x, y, progress)
        points.append(
            {axis: value, "n": config.size_n, "parameters": n_parameters(model), "rows": rows}
        )
        del model
    return points


# -- penalty vs past tasks ---------------------------------------------------------------------


@dataclass
class PenaltyVariant:
    """One training setup: a model copy, Adam, and an EWC penalty (or none)."""

    label: str
    estimator: str | None
    mode: str | None
    tasks: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    penalty: EWCPenalty | None
    times: list[float]


def penalty_variant(
    base: nn.Module,
    estimator: str | None,
    mode: str | None,
    tasks: int,
    curvature: estimators.Curvature | None,
) -> PenaltyVariant:
    """A copy of ``base`` in train mode, with ``tasks`` past tasks consolidated in ``mode``."""
    model = copy.deepcopy(base).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    penalty = None
    if curvature is not None and mode is not None:
        penalty = EWCPenalty(PENALTY_LAMBDA, mode=mode)
        for _ in range(tasks):
            penalty.consolidate(model, curvature)
    label = "plain" if estimator is None else f"{estimator} {mode} T={tasks}"
    return PenaltyVariant(label, estimator, mode, tasks, model, optimizer, penalty, [])


def penalty_step(variant: PenaltyVariant, x: torch.Tensor, y: torch.Tensor) -> None:
    """Forward, cross-entropy, backward, the penalty's gradient (as the harness), Adam step."""
    variant.optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(variant.model(x), y).backward()
    if variant.penalty is not None:
        variant.penalty.add_gradients(variant.model)
    variant.optimizer.step()


def penalty_curvatures(
    config: ScalingConfig, model: nn.Module
) -> tuple[list[dict[str, Any]], dict[str, estimators.Curvature]]:
    """Fit each penalty estimator once (full Fisher: a factor of ``PENALTY_FULL_ROWS`` rows)."""
    n_fit = min(PENALTY_FIT_N, max(config.n_values))
    x, y = synthetic(n_fit, 10, config.device)
    fitted, notes = {}, []
    for name in config.penalty_estimators:
        options: dict[str, Any] = {"memory_budget": config.memory_budget}
        n = n_fit
        if name.startswith("full-"):
            options["representation"] = "factor"
            n = min(n_fit, PENALTY_FULL_ROWS)
        try:
            fitted[name] = estimators.make(name, **options).fit(model, x[:n], y[:n])
            notes.append({"estimator": name, "status": "ok", "inputs": n})
        except Exception as err:
            row = {"estimator": name, "inputs": n, **failure(err)}
            row.pop("traceback", None)
            notes.append(row)
    return notes, fitted


def online_defined(curvature: estimators.Curvature) -> str | None:
    """Why online mode is not defined for ``curvature``, or None when it is."""
    try:
        curvature.add(curvature, 1.0)
    except NotImplementedError as err:
        return str(err)
    return None


def sweep_penalty(config: ScalingConfig, progress: Progress) -> dict[str, Any]:
    """Extra time per training step of the penalty after T past tasks, separate vs online."""
    base = tutorial_network(config.device)
    fits, curvatures = penalty_curvatures(config, base)
    variants = [penalty_variant(base, None, None, 0, None)]
    refused = []
    for name, curv in curvatures.items():
        why = online_defined(curv)
        modes = ["separate"] + (["online"] if why is None else [])
        if why is not None:
            refused.append({"estimator": name, "mode": "online", "reason": why.split(":")[0]})
        for mode in modes:
            for t in config.past_tasks:
                variants.append(penalty_variant(base, name, mode, t, curv))
    x, y = synthetic(PENALTY_BATCH, 10, config.device)
    sync = synchronizer(config.device)
    warmup = min(5, config.penalty_steps)
    for step in range(warmup + config.penalty_steps):
        for v in shuffled(variants, step):  # no variant always follows the same one
            seconds, _ = timed(lambda v=v: penalty_step(v, x, y), sync)
            if step >= warmup:
                v.times.append(seconds)
        progress.tick(f"step {step + 1}")
    plain = statistics.median(variants[0].times)
    rows = []
    for v in variants[1:]:
        median = statistics.median(v.times)
        rows.append(
            {
                "estimator": v.estimator,
                "mode": v.mode,
                "tasks": v.tasks,
                "median_s": median,
                "extra_s": median - plain,
                "overhead_pct": 100.0 * (median / plain - 1.0),
                "penalty_bytes": int(v.penalty.nbytes) if v.penalty is not None else 0,
            }
        )
    return {
        "batch_size": PENALTY_BATCH,
        "steps": config.penalty_steps,
        "plain_s": plain,
        "fits": fits,
        "online_refused": refused,
        "rows": rows,
    }


# -- time split of whole runs (from a sweep's records) ----------------------------------------


def run_time_split(record: Any) -> dict[str, float]:
    """Seconds of one run split into training (without penalty), penalty, estimation, evaluation.

    The penalty's share of task t's training time is penalty_ms / (step_ms + penalty_ms), the
    share of a penalised step that the penalty costs (both measured by the harness after task t).
    """
    penalty = 0.0
    for t, train in enumerate(record.train_seconds):
        pen = record.penalty_ms[t] if t < len(record.penalty_ms) else None
        step = record.step_ms[t] if t < len(record.step_ms) else None
        if pen is not None and step is not None and pen + step > 0:
            penalty += float(train) * max(pen, 0.0) / (step + max(pen, 0.0))
    return {
        "training": float(sum(record.train_seconds)) - penalty,
        "penalty": penalty,
        "estimation": float(sum(record.estimate_seconds)),
        "evaluation": float(sum(record.eval_seconds)),
    }


def time_split(results: str | None) -> dict[str, Any] | None:
    """Mean time split per (sequence, method) over the selected runs of a sweep, or None."""
    if results is None:
        return None
    from .report import load_records, summarise

    path = Path(results)
    if not path.is_dir():
        return {"source": str(path), "rows": [], "reason": f"{path} is not a folder"}
    runs = [r for r in summarise(load_records(path)) if r.selected and r.record.status == "ok"]
    groups: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for run in runs:
        groups.setdefault((run.sequence, run.bn, run.label), []).append(run_time_split(run.record))
    rows = []
    for (sequence, bn, label), splits in sorted(groups.items()):
        mean = {k: statistics.fmean(s[k] for s in splits) for k in splits[0]}
        rows.append({"sequence": sequence, "bn": bn, "method": label, "runs": len(splits), **mean})
    return {"source": str(path), "rows": rows, "reason": None if rows else "no finished runs"}


# -- the whole measurement ---------------------------------------------------------------------


def total_ticks(config: ScalingConfig) -> int:
    """Progress steps of the whole measurement."""
    ticks = len(config.n_values) * point_ticks(config, config.n_estimators)
    ticks += (len(config.widths) + len(config.depths)) * point_ticks(config, config.size_estimators)
    ticks += len(config.classes) * point_ticks(config, config.class_estimators)
    return ticks + min(5, config.penalty_steps) + config.penalty_steps


def run_scaling(config: ScalingConfig) -> dict[str, Any]:
    """Measure everything ``config`` asks for; the JSON-ready record."""
    load_start = load_average()
    warn_if_busy(load_start)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    progress = Progress(total_ticks(config), "scaling")
    try:
        by_n = sweep_n(config, progress)
        by_width = sweep_models(
            config,
            progress,
            "width",
            config.widths,
            lambda h: mlp(hidden=h, depth=2),
            config.size_estimators,
            lambda _: 10,
        )
        by_depth = sweep_models(
            config,
            progress,
            "depth",
            config.depths,
            lambda d: mlp(hidden=config.depth_width, depth=d),
            config.size_estimators,
            lambda _: 10,
        )
        by_classes = sweep_models(
            config,
            progress,
            "classes",
            config.classes,
            lambda c: mlp(n_outputs=c),
            config.class_estimators,
            lambda c: c,
        )
        penalty = sweep_penalty(config, progress)
    finally:
        progress.close()
    env = environment(config.device, config.command, load_start)
    settings = asdict(config)
    settings.update(
        input_pixels=INPUT_PIXELS,
        dtype="float32",
        dense_limit_parameters=dense_limit(config.memory_budget),
        memory_method="cuda" if config.device == "cuda" else "proc (in process)",
    )
    return {
        "schema": SCHEMA,
        "environment": env,
        "settings": settings,
        "n": by_n,
        "width": by_width,
        "depth": by_depth,
        "classes": by_classes,
        "penalty": penalty,
        "time_split": time_split(config.results),
    }
