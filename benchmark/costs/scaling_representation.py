r"""Scaling's representation study: the full Fisher kept dense (P x P) or as its factor U (R x P).

``full-exact`` fits :math:`F = U^\top U` with one row of U per (input, class): R = N C rows
(C = 10 here). It keeps F in one of two representations (``estimators.full``, option
``representation``), and the EWC penalty enters training through the same closed-form gradient
:math:`\lambda \sum_t F_t (\theta - \theta_t)` either way (``EWC.add_gradients``, after the loss's
backward):

- **bytes**: dense :math:`4 P^2`; factor :math:`4 R P` (float32);
- **fit**: both compute the R per-(input, class) gradient rows (R backward rows); the dense fit
  then accumulates :math:`F \mathrel{+}= U_c^\top U_c` chunk by chunk, :math:`R P^2`
  multiply-adds, while the factor fit only writes the rows;
- **penalty gradient per step**: dense :math:`F d`, :math:`P^2` multiply-adds; factor
  :math:`U^\top (U d)`, :math:`2 R P` per past task. In separate mode ``estimators.EWC`` merges
  dense terms exactly into one matrix (:math:`M = \sum_t F_t` plus an offset vector; see
  ``estimators.penalty``), so the dense gradient stays one :math:`P^2` matvec (and one vector
  add) whatever T, while factor terms stay one per task: :math:`2 R P T`. Per step the factor is
  cheaper while :math:`2 R T < P`.

Measured here, on the main comparison's network (``mlp``, ``hidden`` 16: 784-16-16-10 without
BatchNorm, P = 13,002) and seeded synthetic inputs, for each N of ``N_VALUES`` and each
representation: the fit's seconds (one warm-up, then ``repeats`` rounds in a fresh seeded order,
best and median kept), ``curvature.nbytes``, and the penalty's extra seconds per training step
(batch 100, the harness's ``training.train_step`` through ``workloads.Variant``, against a plain
step, all variants stepped in every round in a fresh seeded order as in ``scaling_penalty``)
after T = 1 and T = 4 past tasks in separate mode. The T tasks are T consolidations of the one
fitted curvature, each anchored at the network's weights; every task after the first gets its
own copy, as every task's fit is its own tensor in training (T factors are T tensors, read in
turn; ``EWC.consolidate`` adds a later dense matrix into the new one in place), and the seconds
of each consolidation (the anchor's copy; for dense terms, the merge) are kept.

Derived: the full Fisher's part of one run of the two protocol shapes it runs in (``SHAPES``):
its fits, its consolidations and its penalised steps (the steps of the first task carry no
penalty, and cost the same either way). T = 2 and 3 are interpolated linearly between the
measured T = 1 and T = 4 (the factor's cost grows linearly in T; the dense cost is flat in
T). ``protocol_usage`` reads from the experiment files which representation each
experiment forces, so the report can set it beside the measurement. Threads: torch's current
setting (the command line sets it), recorded. Rendering:
``benchmark.report.scaling_representation``.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

import estimators

from .. import provenance
from ..device import synchronizer
from ..experiment import load_experiment
from ..models import make_model, n_parameters
from ..tasks import sequence_spec
from .measure import failure, interleaved_steps, load_average, shuffled, timed
from .workloads import (
    PENALTY_BATCH,
    PENALTY_LAMBDA,
    PENALTY_WARMUP_STEPS,
    Variant,
    make_variant,
    optimizer_description,
    seeded,
    synthetic,
)

ESTIMATOR = "full-exact"
"""The exact Fisher, every label column: R = N C factor rows."""
REPRESENTATIONS = ("dense", "factor")
MODEL = "mlp"
HIDDEN = 16
"""The main comparison's network: ``model = "mlp"``, ``model_options = { hidden = 16 }`` in
``benchmark/experiments/default.toml``, ``full-fisher.toml`` and ``ablation.toml`` (784-16-16-10,
no BatchNorm, P = 13,002)."""
DEPTH = 2
"""Hidden layers of ``mlp`` (its default, which those experiments keep)."""
CLASSES = 10
"""Outputs of the single head of mnist-fmnist and permuted-mnist (10 label columns per input)."""
N_VALUES = (20, 200, 1000)
"""Inputs per fit: ``fisher_samples`` of ``full-fisher.toml``'s row-budget studies (20, 200) and
of every experiment (1,000)."""
PAST_TASKS = (1, 4)
"""T measured: one past task (mnist-fmnist) and four (permuted-mnist's last task)."""
MEMORY_BUDGET = 4 * 1024**3
"""Budget passed to the estimator: 4 GiB, above both representations at every N here (dense
645 MiB; factor 496 MiB at N = 1,000), so that neither is refused for memory."""
STEPS = 40
"""Timed training steps per variant (after ``PENALTY_WARMUP_STEPS`` untimed rounds)."""
TRAIN_INPUTS = 54_000
"""Training inputs per task: MNIST's and FashionMNIST's 60,000 less the validation split
(``val_fraction`` 0.1, ``RunConfig``'s default, which the experiments keep)."""
BATCH_SIZE = 100
"""``batch_size`` of ``default.toml`` (``RunConfig``'s default; ``full-fisher.toml`` keeps it)."""
STEPS_PER_EPOCH = TRAIN_INPUTS // BATCH_SIZE
"""540 training steps per epoch."""
PROTOCOL_EXPERIMENTS = ("full-fisher", "ablation", "full")
"""Experiments whose ``ewc full-exact`` groups on this network ``protocol_usage`` lists."""


@dataclass(frozen=True)
class Shape:
    """The full Fisher's part of one run: ``fits`` fits, then ``steps`` penalised steps per T.

    Attributes:
        sequence: the sequence it is a run of.
        fits: curvature fits (and consolidations) per run: one per task but the last.
        steps: ``(T, steps)``: penalised training steps with T past tasks.
        source: where the numbers come from.
    """

    sequence: str
    fits: int
    steps: tuple[tuple[int, int], ...]
    source: str


SHAPES = (
    Shape(
        "mnist-fmnist",
        1,
        ((1, 4 * STEPS_PER_EPOCH),),
        "full-fisher.toml: 2 tasks, 4 epochs (its [defaults]), batch 100: one fit after MNIST, "
        "then 2,160 penalised steps on FashionMNIST at T = 1",
    ),
    Shape(
        "permuted-mnist",
        4,
        tuple((t, STEPS_PER_EPOCH) for t in (1, 2, 3, 4)),
        "full-fisher.toml: n_tasks = 5, epochs = 1, batch 100: four fits, then 540 penalised "
        "steps at each T = 1, 2, 3, 4",
    ),
)


@dataclass(frozen=True)
class RepresentationConfig:
    """What the representation study measures (``quick_representation``: a tiny version).

    Attributes:
        n_values: inputs per fit (R = N x ``CLASSES`` rows).
        hidden: hidden width of the MLP 784-h-h-10 (``HIDDEN``: the protocol's network).
        steps: timed training steps per penalty variant.
        memory_budget: the estimator's budget in bytes (a refusal is a row, not a crash).
    """

    n_values: tuple[int, ...] = N_VALUES
    hidden: int = HIDDEN
    steps: int = STEPS
    memory_budget: int = MEMORY_BUDGET


def quick_representation() -> RepresentationConfig:
    """Seconds: the MLP 784-4-4-10 (P = 3,210) on N = 4 and 8 inputs, 3 steps."""
    return RepresentationConfig(n_values=(4, 8), hidden=4, steps=3)


Row = dict[str, Any]


# -- fits ----------------------------------------------------------------------------------------


def network(config: RepresentationConfig, device: str) -> nn.Module:
    """The model factory's ``mlp`` with ``hidden`` units, seeded, in eval mode."""
    options = {"hidden": config.hidden, "depth": DEPTH}
    return seeded(lambda: make_model(MODEL, CLASSES, options=options), device)


def warm_up_fits(
    config: RepresentationConfig,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sync: Callable[[], None],
) -> tuple[dict[str, Callable[[], Any]], dict[str, estimators.Curvature], dict[str, Row]]:
    """Per representation: the fit's call, its warm-up curvature and its row (a refusal: a row)."""
    calls, fitted, rows = {}, {}, {}
    for rep in REPRESENTATIONS:
        row = rows[rep] = {"representation": rep}
        try:
            est = estimators.make(ESTIMATOR, representation=rep, memory_budget=config.memory_budget)
            seconds, curv = timed(lambda e=est: e.fit(model, x, y), sync)
        except Exception as err:  # a refusal or failure is a result, the study goes on
            row.update(failure(err))
            row.pop("traceback", None)
            continue
        row.update(status="ok", structure=curv.structure, nbytes=int(curv.nbytes))
        row["warmup_s"] = seconds
        calls[rep] = lambda e=est: e.fit(model, x, y)
        fitted[rep] = curv
    return calls, fitted, rows


def time_fits(
    calls: Mapping[str, Callable[[], Any]],
    rows: dict[str, Row],
    repeats: int,
    sync: Callable[[], None],
) -> None:
    """``repeats`` rounds, each fit once per round in a fresh seeded order; best and median."""
    times: dict[str, list[float]] = {rep: [] for rep in calls}
    for r in range(repeats):
        for rep in shuffled(list(calls), r):
            seconds, result = timed(calls[rep], sync)
            del result
            times[rep].append(seconds)
    for rep, values in times.items():
        rows[rep].update(
            fit_times_s=values, fit_s=min(values), fit_median_s=statistics.median(values)
        )


# -- the penalty per training step -------------------------------------------------------------


def own_copy(curvature: estimators.Curvature) -> estimators.Curvature:
    """A copy: a later dense task is merged in place, and T factors are T tensors in training."""
    return copy.deepcopy(curvature)


def consolidated(
    base: nn.Module, curvature: estimators.Curvature, rep: str, tasks: int, sync: Callable[[], None]
) -> tuple[Variant, list[float]]:
    """A training variant whose separate-mode penalty holds ``tasks`` tasks; each consolidation's s.

    The first task consolidates ``curvature`` itself, later ones ``own_copy`` of it, so that
    ``curvature`` is never modified (``EWC.consolidate`` merges a later dense matrix into the
    new one, in place).
    """
    plain = make_variant(base)  # a train-mode copy of the network and the harness's optimizer
    penalty = estimators.EWC(PENALTY_LAMBDA, mode="separate")
    seconds = []
    for t in range(tasks):
        task = curvature if t == 0 else own_copy(curvature)
        seconds.append(timed(lambda c=task: penalty.consolidate(plain.model, c), sync)[0])
    name = f"{ESTIMATOR} {rep} separate T={tasks}"
    variant = Variant(name, plain.model, plain.optimizer, penalty, rep, "separate", tasks)
    return variant, seconds


def time_penalty(
    config: RepresentationConfig,
    base: nn.Module,
    fitted: Mapping[str, estimators.Curvature],
    rows: dict[str, Row],
    sync: Callable[[], None],
) -> float:
    """Each fitted representation's extra seconds per step at each T (into its row); the plain s."""
    variants = [make_variant(base)]
    for rep, curvature in fitted.items():
        for tasks in PAST_TASKS:
            variant, seconds = consolidated(base, curvature, rep, tasks, sync)
            variants.append(variant)
            if tasks == max(PAST_TASKS):
                rows[rep]["consolidate_s"] = seconds
    batch = synthetic(PENALTY_BATCH, CLASSES, str(next(base.parameters()).device))
    warmup = min(PENALTY_WARMUP_STEPS, config.steps)
    interleaved_steps(variants, [batch], config.steps, warmup, sync)
    plain = statistics.median(variants[0].times)
    for v in variants[1:]:
        median = statistics.median(v.times)
        rows[str(v.estimator)].setdefault("penalty", []).append(
            {
                "tasks": v.tasks,
                "median_s": median,
                "extra_s": median - plain,
                "penalty_bytes": v.penalty_bytes,
            }
        )
    return plain


# -- per run -----------------------------------------------------------------------------------


def penalty_at(extra: Mapping[int, float], tasks: int) -> float:
    """Extra seconds per step at T = ``tasks``: measured, or linear between the nearest measured.

    Raises:
        ValueError: ``tasks`` outside the measured range.
    """
    if tasks in extra:
        return extra[tasks]
    below = max((t for t in extra if t < tasks), default=None)
    above = min((t for t in extra if t > tasks), default=None)
    if below is None or above is None:
        raise ValueError(f"T = {tasks} is outside the measured T ({sorted(extra)})")
    share = (tasks - below) / (above - below)
    return extra[below] + share * (extra[above] - extra[below])


def run_seconds(row: Row, shape: Shape) -> float:
    """Seconds of the full Fisher's part of one run: fits, consolidations, penalised steps.

    ``shape.fits`` fits at the best fit time, the first ``shape.fits`` consolidations measured
    with ``max(PAST_TASKS)`` tasks (the last one repeated beyond them), and the steps at each T.
    """
    extra = {p["tasks"]: p["extra_s"] for p in row["penalty"]}
    merges = list(row["consolidate_s"])
    merges += merges[-1:] * max(0, shape.fits - len(merges))
    steps = sum(n * penalty_at(extra, t) for t, n in shape.steps)
    return shape.fits * row["fit_s"] + sum(merges[: shape.fits]) + steps


def cheaper(rows: Mapping[str, Row], sequence: str) -> str | None:
    """The representation with the fewest seconds per run of ``sequence`` (None: not both)."""
    costs = {rep: r["runs"][sequence] for rep, r in rows.items() if r.get("runs")}
    return min(costs, key=costs.__getitem__) if len(costs) == len(REPRESENTATIONS) else None


# -- one N, and the whole study ----------------------------------------------------------------


def measure_point(
    config: RepresentationConfig,
    model: nn.Module,
    n: int,
    repeats: int,
    tick: Callable[[], None],
) -> dict[str, Any]:
    """Both representations at N = ``n``: fit, bytes, penalty per step, seconds per run."""
    device = str(next(model.parameters()).device)
    sync = synchronizer(device)
    x, y = synthetic(n, CLASSES, device)
    calls, fitted, rows = warm_up_fits(config, model, x, y, sync)
    time_fits(calls, rows, repeats, sync)
    tick()
    plain = time_penalty(config, model, fitted, rows, sync) if fitted else None
    del fitted
    for row in rows.values():
        if row["status"] == "ok":
            row["runs"] = {s.sequence: run_seconds(row, s) for s in SHAPES}
    tick()
    cheapest = {s.sequence: cheaper(rows, s.sequence) for s in SHAPES}
    point_rows = list(rows.values())
    return {
        "n": n,
        "rows_r": n * CLASSES,
        "plain_s": plain,
        "rows": point_rows,
        "cheaper": cheapest,
    }


def representation_ticks(config: RepresentationConfig) -> int:
    """Progress steps of the study: two per N."""
    return 2 * len(config.n_values)


def measure_representation(
    config: RepresentationConfig,
    repeats: int,
    device: str = "cpu",
    command: str = "",
    tick: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """The study's record: settings, shapes, one point per N, the protocol's choices."""
    load_start = load_average()
    model = network(config, device)
    points = [measure_point(config, model, n, repeats, tick) for n in config.n_values]
    return {
        "settings": {
            **asdict(config),
            "estimator": ESTIMATOR,
            "model": MODEL,
            "depth": DEPTH,
            "classes": CLASSES,
            "parameters": n_parameters(model),
            "past_tasks": list(PAST_TASKS),
            "repeats": repeats,
            "warmup_steps": min(PENALTY_WARMUP_STEPS, config.steps),
            "batch_size": PENALTY_BATCH,
            "optimizer": optimizer_description(),
            "lambda": PENALTY_LAMBDA,
            "dtype": "float32",
        },
        "shapes": [asdict(s) for s in SHAPES],
        "points": points,
        "protocol": protocol_usage(),
        "threads": torch.get_num_threads(),
        "device": device,
        "date": provenance.now(),
        "git": provenance.git_sha(),
        "command": command,
        "load_average": [load_start, load_average()],
    }


# -- what the protocol uses --------------------------------------------------------------------


def protocol_usage(experiments: tuple[str, ...] = PROTOCOL_EXPERIMENTS) -> dict[str, Any]:
    """Each experiment's ``ewc full-exact`` groups on the MLP 784-16-16-10, as its file sets them.

    Per distinct (experiment, sequence, ``fisher_samples``): the rows R (``fisher_samples`` x the
    sequence's head width) and the ``representation`` forced (``auto`` when none is). The
    averaged-output-curvature control (``output_curvature = 'mean'``) is another fit, left out.
    A file that does not load is recorded as ``error``, not raised.
    """
    found: dict[tuple[Any, ...], Row] = {}
    try:
        for name in experiments:
            for group in load_experiment(name).groups:
                base = group.base
                options = dict(base.estimator_options or {})
                if not is_measured_fit(base.estimator, base.model, base.model_options, options):
                    continue
                classes = sequence_spec(base.sequence).outputs
                row = {
                    "experiment": name,
                    "file": f"benchmark/experiments/{name}.toml",
                    "sequence": base.sequence,
                    "fisher_samples": base.fisher_samples,
                    "classes": classes,
                    "rows_r": base.fisher_samples * classes,
                    "representation": options.get("representation", "auto"),
                }
                found.setdefault(tuple(row.values()), row)
    except (OSError, ValueError) as err:
        return {"hidden": HIDDEN, "rows": [], "error": f"{type(err).__name__}: {err}"}
    return {"hidden": HIDDEN, "rows": list(found.values()), "error": None}


def is_measured_fit(
    estimator: str | None,
    model: str,
    model_options: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> bool:
    """Whether a group fits what this study measures: ``full-exact`` (per-input) on the network."""
    net = dict(model_options or {})
    return (
        estimator == ESTIMATOR
        and options.get("output_curvature", "per-input") == "per-input"
        and model == MODEL
        and net.get("hidden") == HIDDEN
        and net.get("depth", DEPTH) == DEPTH
        and not net.get("bn", False)
    )
