"""Estimator timing: fit time, extra peak memory and EWC penalty cost on the tutorial network.

What is measured (``python -m benchmark timing``, see ``benchmark.cli``):

- For every estimator name, every estimator variant (``variants.VARIANTS``: options that change
  the structure, labelled as method labels are, e.g. ``kfac-exact factors=a-diag``) and every N:
  the wall time of ``est.fit(model, x, y)`` on the first N MNIST training inputs (one warm-up
  call, then the median of ``repeats`` calls; fewer calls for an estimator whose warm-up alone is
  slow, marked in the table), the curvature's ``nbytes``, and the extra peak memory of one fit,
  measured in a fresh subprocess (``costs.child``).
- Two references in the same run: the FLOOR, one batched forward + backward of the mean
  cross-entropy over the same N inputs, and the NAIVE loop, one forward + backward per input with
  squared gradients accumulated (the per-input empirical diagonal the slow obvious way; timed on
  at most ``NAIVE_MAX_INPUTS`` inputs and scaled linearly to N). After one warm-up call each, all
  rows are timed in interleaved rounds (a fresh seeded order each), each call right after a floor
  call: on shared cores, load then hits every row alike (``measure.interleaved_rounds``).
- The EWC penalty cost: one training step at batch 100 (the harness's ``training.train_step``
  and Adam) with and without the penalty ``estimators.EWC`` of each estimator's curvature, which
  enters the step as its closed-form gradient ``lam * F (theta - theta_old)`` added after the
  loss's backward; medians over many interleaved steps, each round in a fresh seeded order, so
  that no variant always follows the same one (``measure.interleaved_steps``).

The model is ``tutorial-mlp`` in float32 with a seeded initialisation, BatchNorm running
statistics taken from a few hundred training inputs in train mode (no gradient), then eval mode
(``workloads.tutorial_network``). Nothing is trained: the timings do not depend on the weights.

This module only measures: ``run_timing(config)`` returns the JSON-ready record, and timing.md
is rendered from that record alone by ``benchmark.report.timing`` (golden-tested).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import estimators

from .. import provenance
from ..data import resolve_root
from ..device import resolve_device, synchronizer
from ..timing_record import ratios
from .child import MemoryProbe, memory_method
from .compare import measure_compare
from .measure import (
    SLOW_BUDGET_S,
    Progress,
    SetupError,
    TimedCall,
    environment,
    failure,
    interleaved_rounds,
    interleaved_steps,
    load_average,
    warn_if_busy,
)
from .variants import check_names, default_labels, parse_variant
from .workloads import (
    MODEL,
    NAIVE_MAX_INPUTS,
    PENALTY_BATCH,
    PENALTY_LAMBDA,
    PENALTY_WARMUP_STEPS,
    SYNTHETIC_SEED,
    bn_count,
    estimator_call,
    floor_pass,
    load_data,
    make_variant,
    naive_call,
    naive_inputs,
    optimizer_description,
    timed_options,
    trainable,
    tutorial_network,
)

SCHEMA = "ewc-bench/timing/2"
"""Version 2: every estimator row also records its ``estimator`` and the variant's ``options``
(``{}`` for a plain name); version 1 rows lack both and are plain names (the report reads both).
Rows may also record ``fit_options``, every option the fit ran with (``workloads.timed_options``:
the variant's and the cost tables' own, e.g. the low-rank rows' rank), which the report shows."""
DEFAULT_SIZES = (1000, 10000)
DEFAULT_REPEATS = 5
QUICK_SIZES = (200,)
QUICK_REPEATS = 1
QUICK_PENALTY_STEPS = 10
PENALTY_N = 1000
PENALTY_STEPS = 200
PENALTY_ESTIMATORS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("identity", {}),
    ("diag-exact", {}),
    ("kfac-exact", {}),
    ("ekfac-exact", {}),
    ("lowrank-exact", {"rank": 200}),
    ("full-mc", {"representation": "factor"}),
)


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TimingConfig:
    """What one timing run measures and where it writes.

    Attributes:
        sizes: input counts N, one table each.
        repeats: timed calls per estimator after one warm-up (the median is reported).
        names: the rows to time: estimator names and variant labels (``costs.variants``), in
            table order.
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
            (``costs.compare``).
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

    ``names``: estimator names and variant labels (``variants.check_names``); default every name
    and every ``variants.VARIANTS`` label.

    Raises:
        SetupError: for an unknown name, a bad variant or a non-positive number.
        DeviceError: an unavailable device (``device.resolve_device``).
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
        names=check_names(names) if names else default_labels(),
        device=str(resolve_device(device)),
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


def data_description(config: TimingConfig) -> str:
    """One line saying which inputs were used."""
    if config.synthetic:
        return f"synthetic uniform inputs [N, 1, 28, 28] and random labels (seed {SYNTHETIC_SEED})"
    root = provenance.shown_data_root(resolve_root(config.data_root))
    return f"the first N MNIST training inputs ({root})"


# -- one size: floor, naive loop and every estimator, interleaved ------------------------------


def scale_naive(row: dict[str, Any], n: int) -> dict[str, Any]:
    """The naive row with its median scaled linearly from the measured inputs to N = ``n``."""
    m = naive_inputs(n)
    row.update(measured_inputs=m, scale=n / m)
    if row.get("status") == "ok":
        row.update(measured_median_s=row["median_s"], median_s=row["median_s"] * n / m)
    return row


def fit_call(label: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TimedCall:
    """The timed fit of one row (a name or a variant label); its row records both parts."""
    name, options = parse_variant(label)
    call = estimator_call(name, model, x, y, options, label)
    call.row.update(
        name=label, estimator=name, options=options, fit_options=timed_options(name, options)
    )
    return call


def time_size(
    config: TimingConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[TimedCall, TimedCall, list[TimedCall]]:
    """Warm up every call once, then time them in interleaved rounds against the floor."""
    sync = synchronizer(config.device)
    floor = TimedCall("floor", lambda: floor_pass(model, x, y), adaptive=False)
    naive = naive_call(model, x, y)
    fits = [fit_call(label, model, x, y) for label in config.names]
    calls = [naive, *fits]
    bar = Progress(len(calls), f"N={x.shape[0]:,} timing")
    floor.warm_up(config.repeats, sync)
    for call in calls:
        call.warm_up(config.repeats, sync)
        bar.tick(call.name)
    bar.grow(sum(c.repeats for c in calls))
    interleaved_rounds(calls, floor, sync, bar.tick)
    bar.close()
    return floor, naive, fits


def add_memory(calls: Sequence[TimedCall], probe: MemoryProbe, n: int) -> None:
    """Each successful row's extra peak memory (one child process each on CPU)."""
    bar = Progress(len(calls), f"N={n:,} memory")
    for call in calls:
        row = call.row
        kind = row["name"] if row["name"] in ("floor", "naive") else "estimator"
        name = row.get("estimator", row["name"])
        if row.get("status") == "ok":
            row["memory"] = probe.measure(kind, name, n, call.fn, row.get("options"))
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
    floor_call, naive_call_, fit_calls = time_size(config, model, x, y)
    add_memory([floor_call, naive_call_, *fit_calls], probe, n)
    floor = floor_call.finish()
    naive = scale_naive(naive_call_.finish(), n)
    rows = [c.finish() for c in fit_calls]
    for row in [floor, naive, *rows]:
        row.update(ratios(row, floor.get("median_s"), naive.get("median_s")))
    return {"n": n, "floor": floor, "naive": naive, "estimators": rows}


# -- the penalty cost --------------------------------------------------------------------------


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


def overhead(step_s: float, plain_s: float) -> float:
    """Percentage by which ``step_s`` exceeds ``plain_s``."""
    return 100.0 * (step_s / plain_s - 1.0)


def measure_penalty(
    config: TimingConfig, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> dict[str, Any]:
    """Training-step time with and without each estimator's EWC penalty, interleaved."""
    x, y = inputs[: config.penalty_n], targets[: config.penalty_n]
    fitted = fit_penalty_curvatures(config.names, model, x, y)
    plain = make_variant(model)
    variants = [plain] + [
        make_variant(model, curv, row["name"]) for row, curv in fitted if curv is not None
    ]
    batches = list(zip(x.split(PENALTY_BATCH), y.split(PENALTY_BATCH), strict=True))
    batches = [b for b in batches if b[0].shape[0] > 1] or batches
    warmup = min(PENALTY_WARMUP_STEPS, config.penalty_steps)
    interleaved_steps(variants, batches, config.penalty_steps, warmup, synchronizer(config.device))
    plain_s = statistics.median(plain.times)
    by_name = {v.estimator: v for v in variants[1:]}
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
        "optimizer": optimizer_description(),
        "plain": {"times_s": plain.times, "median_s": plain_s},
        "rows": rows,
    }


# -- the whole run -----------------------------------------------------------------------------


def settings(
    config: TimingConfig, model: nn.Module, n_loaded: int, method: dict[str, Any]
) -> dict[str, Any]:
    """The record's ``settings``: what was measured, on what, how."""
    return {
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
    }


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
    model = tutorial_network(inputs[: bn_count(n_loaded)], config.device)
    inputs, targets = inputs.to(config.device), targets.to(config.device)
    method = memory_method(config.memory, config.device)
    probe = MemoryProbe(method, n_loaded, config.threads, config.data_root, config.synthetic)
    sizes = [measure_size(config, n, model, inputs, targets, probe) for n in config.sizes]
    wanted = any(name in config.names for name, _ in PENALTY_ESTIMATORS)
    penalty = measure_penalty(config, model, inputs, targets) if wanted else None
    compare = None
    if config.compare:
        compare = measure_compare(min(config.sizes), inputs, targets, config.repeats, config.device)
    return {
        "schema": SCHEMA,
        "environment": environment(config.device, config.command, load_start),
        "settings": settings(config, model, n_loaded, method),
        "sizes": sizes,
        "penalty": penalty,
        "compare": compare,
    }
