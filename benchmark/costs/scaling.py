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
- **penalty vs past tasks** (``scaling_penalty``): the extra time per training step (batch 100,
  ``workloads.Variant``) of the EWC penalty after T tasks, separate mode (one term per task:
  linear in T) against online mode (one accumulated curvature: flat in T; KFAC's and EKFAC's
  online modes by their ``online_rule``: ``n-weighted`` flat, ``sum`` linear in T), all variants
  stepped in every round in a fresh
  seeded order (with a fixed order the plain step always followed the costliest variant, found
  cold caches, and the small overheads came out near zero);
- **where the dense Fisher stops fitting**: P at which P^2 floats exceed the memory budget, against
  the bytes of the low-rank factor (rows x P) — computed, and checked against the ``nbytes`` of the
  full-Fisher fits of the width sweep (``full-mc`` picks dense where it fits, else the factor);
- **dense or factor** (``scaling_representation``): ``full-exact``'s fit, bytes and penalty per
  step kept dense or as its factor, and what each costs per run of the protocol's shapes;
- **time split of whole runs**: training, penalty, estimation and evaluation seconds of the
  harness's runs, read from a sweep's records when ``--results`` is given.

Timing: each point gets one warm-up call, then ``repeats`` rounds in which every estimator of the
point and the floor are called in a fresh seeded order (load on shared cores then hits all alike);
the median is reported, with its ratio to the floor's median of the same rounds. Rows are
estimator names or variant labels (``costs.variants``: ``lowrank-exact rank=200``); a fit over
its estimator's ``max_n`` or ``max_parameters`` is ``not timed`` (``MAX_N``, ``MAX_PARAMETERS``:
the low-rank fits, seconds each, stop at N = 3,000 and P = 250,000). Memory:
``nbytes`` of the fitted curvature, and the extra peak memory of one more call, in process
(``measure.peak_extra``). Rendering lives in ``benchmark.report.scaling``.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import estimators
from estimators.curvature import DEFAULT_MEMORY_BUDGET

from ..device import synchronizer
from ..models import INPUT_PIXELS, mlp, n_parameters
from .executors import ExecutorsConfig, measure_executors
from .measure import (
    NotTimed,
    Progress,
    SetupError,
    environment,
    failure,
    is_cuda,
    load_average,
    peak_extra,
    shuffled,
    timed,
    warn_if_busy,
)
from .scaling_penalty import row_identity, sweep_penalty
from .scaling_representation import (
    RepresentationConfig,
    measure_representation,
    quick_representation,
    representation_ticks,
)
from .throughput import ThroughputConfig, measure_throughput
from .time_split import time_split
from .variants import parse_variant
from .workloads import (
    PENALTY_WARMUP_STEPS,
    floor_pass,
    seeded,
    synthetic,
    synthetic_tutorial_network,
)

SCHEMA = "ewc-bench/scaling/2"
"""Version 2: estimator rows (sweeps, penalty fits, penalty rows, online refusals) also record
their ``name`` (the label, e.g. ``lowrank-exact rank=200``) and the variant's ``options`` (``{}``
for a plain name); ``estimator`` stays the estimator name. Version 1 rows lack both and are plain
names (the report reads both)."""
FLOAT_BYTES = 4
LOWRANK = tuple(f"lowrank-{mode}" for mode in ("exact", "mc", "empirical"))
MAX_N: dict[str, int] = dict.fromkeys(LOWRANK, 3000)
"""Largest N a fit is timed at: a rank-200 low-rank fit is a few seconds of fixed cost (the
sketch's orthogonalisations) plus ``power_iterations + 1`` passes over the N x C rows, about
6 s at N = 1,000 on the tutorial network (2 threads); N = 10,000 would add minutes per point."""
MAX_PARAMETERS: dict[str, int] = dict.fromkeys(LOWRANK, 250_000)
"""Largest P a fit is timed at (width and depth sweeps): a rank-200 low-rank fit grows with P
(about 15 s at P = 200,000, N = 1,000, 2 threads), and its sketch of P x (rank + oversample)
floats exceeds the default 2 GiB budget near P = 230,000 anyway."""


PENALTY_LABELS = (
    "diag-exact",
    "kfac-exact",
    "kfac-exact online_rule=n-weighted",
    "kfac-exact online_rule=sum",
    "ekfac-exact",
    "ekfac-exact online_rule=sum",
    "lowrank-exact rank=200",
    "full-mc",
)
"""The penalty study's rows: separate mode for plain labels (online too where the curvature adds
online), online mode for ``online_rule`` labels (``scaling_penalty``)."""
LABEL_FIELDS = ("n_estimators", "size_estimators", "class_estimators", "penalty_estimators")


class ScalingError(SetupError):
    """A scaling configuration that cannot run (bad sizes, unknown estimator names)."""


@dataclass(frozen=True)
class ScalingConfig:
    """What to measure; ``quick()`` gives a tiny version for tests.

    Attributes:
        n_values: input counts for the N sweep (tutorial network).
        n_estimators: estimators of the N sweep: names or variant labels (``costs.variants``,
            e.g. ``lowrank-exact rank=200``), as are the other ``*_estimators``.
        widths: hidden widths of the MLP 784-h-h-10 (width sweep, at ``size_n`` inputs).
        depths: hidden-layer counts of the MLP at ``depth_width`` (depth sweep).
        size_estimators: estimators of the width and depth sweeps.
        classes: output counts of the MLP 784-100-100-C (class sweep, at ``size_n`` inputs).
        class_estimators: estimators of the class sweep.
        past_tasks: numbers of past tasks T in the penalty study.
        penalty_estimators: estimators in the penalty study: separate mode, and online where
            defined; a label with ``online_rule`` runs online only (``scaling_penalty``).
        penalty_steps: timed training steps per penalty variant (after 5 warm-up steps).
        repeats: timed rounds per point.
        memory_budget: the full-Fisher budget in bytes (the dense limit's line).
        max_n: per estimator name, the largest N its fits are timed at (``MAX_N``); above it
            the row is ``not timed``, saying so.
        max_parameters: per estimator name, the largest P its fits are timed at
            (``MAX_PARAMETERS``), likewise.
        memory: measure extra peak memory (one more call per row).
        results: a sweep's results folder for the time split, or None.
        throughput: runs per minute alone vs grouped (``throughput``), or None to skip.
        executors: runs per minute through the process pool and Dask (``executors``), or None.
        representation: the full Fisher dense or as its factor (``scaling_representation``,
            timed with ``repeats`` rounds), or None.
    """

    n_values: tuple[int, ...] = (100, 300, 1000, 3000, 10000)
    n_estimators: tuple[str, ...] = (
        "diag-empirical",
        "diag-exact",
        "kfac-exact",
        "ekfac-exact",
        "lowrank-exact rank=200",
        "full-mc",
    )
    widths: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)
    depths: tuple[int, ...] = (1, 2, 4, 8)
    depth_width: int = 256
    size_n: int = 1000
    size_estimators: tuple[str, ...] = (
        "diag-exact",
        "kfac-exact",
        "ekfac-exact",
        "lowrank-exact rank=200",
        "full-mc",
    )
    classes: tuple[int, ...] = (2, 10, 50, 100)
    class_estimators: tuple[str, ...] = (
        "diag-empirical",
        "diag-mc",
        "diag-exact",
        "kfac-mc",
        "kfac-exact",
    )
    past_tasks: tuple[int, ...] = (1, 2, 4, 8, 16)
    penalty_estimators: tuple[str, ...] = PENALTY_LABELS
    penalty_steps: int = 40
    repeats: int = 3
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    max_n: Mapping[str, int] = field(default_factory=lambda: dict(MAX_N))
    max_parameters: Mapping[str, int] = field(default_factory=lambda: dict(MAX_PARAMETERS))
    memory: bool = True
    device: str = "cpu"
    threads: int | None = None
    results: str | None = None
    command: str = ""
    quick: bool = False
    throughput: ThroughputConfig | None = field(default_factory=ThroughputConfig)
    executors: ExecutorsConfig | None = field(default_factory=ExecutorsConfig)
    representation: RepresentationConfig | None = field(default_factory=RepresentationConfig)

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
        for field_name in LABEL_FIELDS:
            for label in getattr(self, field_name):
                try:
                    parse_variant(label)
                except SetupError as err:
                    raise ScalingError(f"{field_name}: {err}") from None
        known = set(estimators.names())
        for field_name in ("max_n", "max_parameters"):
            bad = [n for n in getattr(self, field_name) if n not in known]
            if bad:
                raise ScalingError(
                    f"unknown estimator name(s) in {field_name}: {', '.join(bad)}; "
                    f"valid: {', '.join(sorted(known))}"
                )


QUICK_SIZE_LABELS = ("diag-exact", "kfac-exact", "ekfac-exact", "lowrank-exact rank=200", "full-mc")


def quick_config(**overrides: Any) -> ScalingConfig:
    """A configuration that runs end to end in seconds (tests, smoke runs)."""
    settings: dict[str, Any] = dict(
        n_values=(20, 40),
        n_estimators=QUICK_SIZE_LABELS,
        widths=(4, 8),
        depths=(1, 2),
        depth_width=8,
        size_n=20,
        size_estimators=QUICK_SIZE_LABELS,
        classes=(2, 5),
        class_estimators=("diag-mc", "diag-exact"),
        # 20 inputs x 10 classes = the rank: the low-rank fit's one-pass exact path (no sketch)
        max_n={"lowrank-exact": 20},
        past_tasks=(1, 3),
        penalty_estimators=(*PENALTY_LABELS[:-2], "lowrank-exact rank=20", "full-mc"),
        penalty_steps=3,
        repeats=1,
        quick=True,
        throughput=ThroughputConfig(
            ("mlp hidden=16",), (1, 2), epochs=1, fisher_samples=16, repeats=1
        ),
        executors=None,  # starts clusters: `scaling --executors-only` measures it alone
        representation=quick_representation(),
    )
    settings.update(overrides)
    return ScalingConfig(**settings)


def dense_limit(budget: int, itemsize: int = FLOAT_BYTES) -> int:
    """The largest P whose dense P x P Fisher fits in ``budget`` bytes: floor(sqrt(budget / s))."""
    return math.isqrt(budget // itemsize)


# -- one point: several estimators and the floor, interleaved ---------------------------------

Calls = dict[str, Callable[[], Any]]
Rows = dict[str, dict[str, Any]]


def check_limits(config: ScalingConfig, name: str, n: int, parameters: int) -> None:
    """Raise ``NotTimed`` when ``name`` is over its ``max_n`` or ``max_parameters`` here."""
    limit = config.max_n.get(name)
    if limit is not None and n > limit:
        raise NotTimed(f"not timed above N = {limit:,} (each fit linear in N; see smaller N)")
    limit = config.max_parameters.get(name)
    if limit is not None and parameters > limit:
        raise NotTimed(
            f"not timed above P = {limit:,} (each fit grows with P; see the smaller models)"
        )


def warm_up_fits(
    config: ScalingConfig,
    labels: Sequence[str],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    progress: Progress,
) -> tuple[Calls, Rows]:
    """The floor's call, and each label's after one warm-up fit (a failure: a row only).

    Rows and calls are keyed by label; a row records ``estimator``, ``name`` and ``options``
    (``scaling_penalty.row_identity``). Over ``max_n``/``max_parameters``: ``not timed``.
    """
    sync = synchronizer(config.device)
    calls: Calls = {"floor": lambda: floor_pass(model, x, y)}
    rows: Rows = {"floor": {"estimator": "floor", "status": "ok"}}
    for label in labels:
        row = rows[label] = row_identity(label)
        try:
            check_limits(config, row["estimator"], x.shape[0], n_parameters(model))
            est = estimators.make(
                row["estimator"], memory_budget=config.memory_budget, **row["options"]
            )
            seconds, curv = timed(lambda e=est: e.fit(model, x, y), sync)
        except Exception as err:  # a refusal or failure is a result, the sweep goes on
            row.update(failure(err))
            row.pop("traceback", None)
            progress.tick(label)
            if config.memory:
                progress.tick(f"{label}: no memory to measure")
            continue
        row.update(status="ok", warmup_s=seconds, nbytes=int(curv.nbytes), structure=curv.structure)
        del curv
        calls[label] = lambda e=est: e.fit(model, x, y)
        progress.tick(label)
    return calls, rows


def timed_rounds(config: ScalingConfig, calls: Calls, progress: Progress) -> dict[str, list[float]]:
    """``repeats`` rounds, each call once per round in a fresh seeded order: seconds per call."""
    sync = synchronizer(config.device)
    order = list(calls)
    times: dict[str, list[float]] = {k: [] for k in order}
    for r in range(config.repeats):
        for key in shuffled(order, r):
            seconds, result = timed(calls[key], sync)
            del result
            times[key].append(seconds)
        progress.tick(f"round {r + 1}")
    return times


def measure_point(
    config: ScalingConfig,
    names: Sequence[str],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    progress: Progress,
) -> list[dict[str, Any]]:
    """Rows for ``names`` plus ``floor`` on one (model, inputs): times, bytes, memory."""
    calls, rows = warm_up_fits(config, names, model, x, y, progress)
    calls["floor"]()  # warm-up of the floor
    times = timed_rounds(config, calls, progress)
    floor_s = statistics.median(times["floor"])
    for key in calls:
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
    model = synthetic_tutorial_network(config.device)
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


# -- the whole measurement ---------------------------------------------------------------------


def total_ticks(config: ScalingConfig) -> int:
    """Progress steps of the whole measurement."""
    ticks = len(config.n_values) * point_ticks(config, config.n_estimators)
    ticks += (len(config.widths) + len(config.depths)) * point_ticks(config, config.size_estimators)
    ticks += len(config.classes) * point_ticks(config, config.class_estimators)
    ticks += min(PENALTY_WARMUP_STEPS, config.penalty_steps) + config.penalty_steps
    t, e, r = config.throughput, config.executors, config.representation
    return (
        ticks
        + (representation_ticks(r) if r else 0)
        + (len(t.networks) * len(t.sizes) if t else 0)
        + (len(e.settings) * e.repeats if e else 0)
    )


def measure_all(config: ScalingConfig, progress: Progress) -> dict[str, Any]:
    """The four sweeps and the penalty study, in this order."""
    return {
        "n": sweep_n(config, progress),
        "width": sweep_models(
            config,
            progress,
            "width",
            config.widths,
            lambda h: mlp(hidden=h, depth=2),
            config.size_estimators,
            lambda _: 10,
        ),
        "depth": sweep_models(
            config,
            progress,
            "depth",
            config.depths,
            lambda d: mlp(hidden=config.depth_width, depth=d),
            config.size_estimators,
            lambda _: 10,
        ),
        "classes": sweep_models(
            config,
            progress,
            "classes",
            config.classes,
            lambda c: mlp(n_outputs=c),
            config.class_estimators,
            lambda c: c,
        ),
        "penalty": sweep_penalty(config, progress),
        "representation": measure_representation(
            config.representation, config.repeats, config.device, config.command, progress.tick
        )
        if config.representation
        else None,
        "throughput": measure_throughput(config.throughput, progress.tick)
        if config.throughput
        else None,
        "executors": measure_executors(
            config.executors, config.results, config.command, progress.tick
        )
        if config.executors
        else None,
    }


def run_scaling(config: ScalingConfig) -> dict[str, Any]:
    """Measure everything ``config`` asks for; the JSON-ready record."""
    load_start = load_average()
    warn_if_busy(load_start)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    progress = Progress(total_ticks(config), "scaling")
    try:
        measured = measure_all(config, progress)
    finally:
        progress.close()
    env = environment(config.device, config.command, load_start)
    settings = asdict(config)
    settings.update(
        input_pixels=INPUT_PIXELS,
        dtype="float32",
        dense_limit_parameters=dense_limit(config.memory_budget),
        memory_method="cuda" if is_cuda(config.device) else "proc (in process)",
    )
    return {
        "schema": SCHEMA,
        "environment": env,
        "settings": settings,
        **measured,
        "time_split": time_split(config.results),
    }
