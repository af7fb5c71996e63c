r"""Part E: every estimator of the sweep's main comparison against the exact dense Fisher.

The network, its training and each estimator's settings come from the sweep's experiment
(``load_experiment``, ``default``): its groups of ``mnist-fmnist`` on the main comparison's
network (``mlp`` with ``hidden = 16``: 784-16-16-10 without BatchNorm, P = 13,002), with seed 0.
One harness run of that protocol without a penalty gives :math:`\theta_A`, the weights at the end
of MNIST: what every seed-0 run of the sweep consolidates, since no penalty acts during the first
task. It also gives the real drift :math:`\delta = \theta_B - \theta_A` of FashionMNIST trained
next without a penalty (the direction that the penalty has to resist).

- Reference F: ``full-exact`` with ``representation = "dense"`` on the sweep's own N inputs of
  task A (``draws``: the first N of the permutation ``methods.ewc.fit_inputs`` draws with seed 0),
  :math:`F = \frac1N \sum_n J_n^\top (\operatorname{diag} p_n - p_n p_n^\top) J_n`, float32
  entries (645 MiB at P = 13,002), metrics summed in float64. Its top ``K_LARGE`` eigenpairs come
  from ``approx.top_eigen_dense`` (the largest relative residual is reported).
- Its own sampling noise: the same estimator on the next N inputs of the permutation (disjoint
  from the first), compared with F by every metric (the row ``full-exact`` on ``disjoint``
  inputs). An estimator's error below that row's is below what another draw of N inputs would
  change.
- Every estimator the sweep ran on that network (``ewc <estimator>`` and ``l2``, whose curvature
  is the identity), fitted by the sweep's own function (``methods.ewc.fit_curvature``) with its
  group's settings and seed 0: the same inputs, labels, mc draws and options as the sweep's seed-0
  runs after task A.

Metrics (``approx``): relative Frobenius error and its scale-free form, relative trace error,
the drift penalty error :math:`(\delta^\top\hat F\delta - \delta^\top F\delta)/\delta^\top F
\delta`, the top-k penalty errors for k = ``K_SMALL`` and ``K_LARGE`` (the sweep's two low-rank
ranks), the top-``K_LARGE`` error after the best rescaling, and the flat share of
:math:`\hat F`'s trace outside F's top-``K_LARGE`` eigenspace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import estimators
from estimators import Curvature, DenseCurvature
from estimators.layout import ParamLayout

from ..config import RunConfig
from ..experiment import load_experiment
from ..harness import run, sequence_of
from ..methods.ewc import fit_curvature
from ..models import make_model, task_forward
from ..outcomes import model_text, setting_text
from ..seeds import generator
from ..tasks import Task
from . import approx

SEQUENCE = "mnist-fmnist"
"""The sequence whose first task the metrics are measured on."""
K_SMALL, K_LARGE = 20, 200
"""The k of the top-k eigen-direction metrics: the two ranks of the sweep's low-rank estimator."""
CURVATURE_METHODS = ("ewc", "l2")
"""Methods whose penalty is a curvature (``l2``: the identity)."""
DISJOINT = "disjoint"
"""``inputs`` of the reference-noise row: F on N other inputs than the reference's."""


@dataclass(frozen=True)
class Protocol:
    """What part E runs: the training run (no penalty) and one fitting config per estimator."""

    train: RunConfig
    fits: tuple[RunConfig, ...]


def protocol(
    experiment: str, model: str, options: dict[str, Any], overrides: dict[str, Any]
) -> Protocol:
    """The experiment's ``mnist-fmnist`` groups on ``model`` with ``options``, at seed 0.

    ``overrides`` (run settings: ``data``, and for tests a smaller network, N and epochs) apply to
    every config. One fit per distinct (method, estimator, estimator options) that has a curvature.

    Raises:
        ValueError: the experiment has no such group.
    """
    bases = [
        g.base
        for g in load_experiment(experiment).groups
        if g.base.sequence == SEQUENCE and g.base.model == model and g.base.model_options == options
    ]
    if not bases:
        raise ValueError(f"experiment {experiment!r} runs no {SEQUENCE} on {model} {options}")
    fits, seen = [], set()
    for base in bases:
        key = (base.method, base.estimator, setting_text(base.estimator_options))
        if base.method in CURVATURE_METHODS and base.mode == "separate" and key not in seen:
            seen.add(key)
            fits.append(base.replace(seed=0, lam=0.0, **overrides))
    train = bases[0].replace(
        method="baseline", estimator=None, estimator_options={}, seed=0, lam=0.0, **overrides
    )
    return Protocol(train, tuple(fits))


# -- the network ---------------------------------------------------------------------------------
@dataclass
class Network:
    """The model at the end of task A, task A itself, and the drift to the end of task B."""

    model: nn.Module
    layout: ParamLayout
    task: Task
    drift: torch.Tensor
    seconds: float


def flat(state: dict[str, torch.Tensor], layout: ParamLayout) -> torch.Tensor:
    """The layout's parameters of a state dict as one flat vector."""
    return torch.cat([state[n].reshape(-1) for n in layout.names])


def train_network(config: RunConfig, root: str | None) -> Network:
    """One harness run of ``config`` (two tasks); the weights after each from ``on_task_end``."""
    states: dict[int, dict[str, torch.Tensor]] = {}

    def keep(t: int, model: nn.Module) -> None:
        states[t] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    start = time.perf_counter()
    run(config, root=root, on_task_end=keep)
    seconds = time.perf_counter() - start
    seq = sequence_of(config, root, download=False)
    torch.manual_seed(0)
    model = make_model(config.model, seq.n_outputs, seq.n_heads, config.model_options)
    model.load_state_dict(states[0])
    model.eval()
    layout = ParamLayout.of(model)
    drift = flat(states[1], layout) - flat(states[0], layout)
    return Network(model, layout, seq.tasks[0], drift, seconds)


def draws(config: RunConfig, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """The sweep's N training inputs of task A and N others, as indices into ``task.train``.

    ``methods.ewc.fit_inputs`` takes the first N of ``randperm`` with ``generator(seed, "fisher",
    0)``; the second draw is the next N of the same permutation, so the two are disjoint.

    Raises:
        ValueError: the task has fewer than 2N training inputs.
    """
    n, size = config.fisher_samples, len(task.train)
    if 2 * n > size:
        raise ValueError(f"two disjoint draws of {n:,} inputs need {2 * n:,}; task A has {size:,}")
    perm = torch.randperm(size, generator=generator(config.seed, "fisher", 0))
    return perm[:n], perm[n : 2 * n]


def exact_dense(network: Network, index: torch.Tensor) -> tuple[DenseCurvature, float]:
    """``full-exact``, dense, on the inputs ``index`` of task A, through its head; and seconds."""
    train = network.task.train
    x, y = train.float_inputs(index), train.targets[index]
    forward = task_forward(network.model, network.task.head)
    start = time.perf_counter()
    curv = estimators.make("full-exact", representation="dense", forward=forward)
    fitted = curv.fit(network.model, x, y)
    assert isinstance(fitted, DenseCurvature)
    return fitted, time.perf_counter() - start


# -- metrics -------------------------------------------------------------------------------------
@dataclass
class DenseReference:
    """F, its norms and trace, its top eigenpairs and the drift's penalty under it."""

    curv: DenseCurvature
    frob_sq: float
    trace: float
    values: np.ndarray
    vectors: np.ndarray
    residual: float
    seconds: float

    @classmethod
    def of(cls, curv: DenseCurvature) -> DenseReference:
        """Norm, trace and the top ``K_LARGE`` eigenpairs (timed)."""
        start = time.perf_counter()
        values, vectors, residual = approx.top_eigen_dense(curv.matrix, K_LARGE)
        seconds = time.perf_counter() - start
        trace = float(curv.diagonal_flat().double().sum())
        return cls(curv, curv.frobenius_sq(), trace, values, vectors, residual, seconds)


def measure(curv: Curvature, ref: DenseReference, drift: torch.Tensor) -> dict[str, Any]:
    """Every part-E metric of ``curv`` against ``ref`` (``approx``); ``quadratics`` holds a_i."""
    a = approx.eigen_quadratics(curv, ref.vectors)
    trace = float(curv.diagonal_flat().double().sum())
    cross = approx.dense_inner(curv, ref.curv.matrix)
    rel, scale_free = approx.frobenius_errors(approx.frobenius_sq(curv), cross, ref.frob_sq)
    return {
        "rel_frobenius": rel,
        "scale_free_error": scale_free,
        "rel_trace": (trace - ref.trace) / ref.trace,
        "drift_penalty_error": approx.relative_quadratic_error(curv, ref.curv, drift),
        "top20_error": approx.top_penalty_error(a, ref.values, K_SMALL),
        "top200_error": approx.top_penalty_error(a, ref.values, K_LARGE),
        "top200_error_rescaled": approx.rescaled_top_penalty_error(a, ref.values, K_LARGE),
        "flat_share_200": approx.flat_share(a, trace, K_LARGE),
        "trace": trace,
        "quadratics": a.tolist(),
    }


def row_of(
    config: RunConfig,
    curv: Curvature,
    ref: DenseReference,
    net: Network,
    seconds: float,
    inputs: str,
) -> dict[str, Any]:
    """One row of part E: ``curv`` (fitted under ``config`` on ``inputs``) against F."""
    reference_noise = inputs == DISJOINT
    return {
        "part": "sweep-network",
        "model": model_text(config.to_dict()),
        "estimator": "full-exact" if reference_noise else approx.curvature_label(config.to_dict()),
        "method": None if reference_noise else config.method,
        "rank": None if reference_noise else config.estimator_options.get("rank"),
        "n_inputs": config.fisher_samples,
        "inputs": inputs,
        "seed": config.seed,
        **measure(curv, ref, net.drift),
        "fit_seconds": seconds,
        "nbytes": curv.nbytes,
        "object": None if reference_noise else approx.object_key(config.to_dict()),
    }


def sweep_network(proto: Protocol, root: str | None, bar: Callable[[str], None]) -> dict[str, Any]:
    """Part E: train, fit F and its disjoint twin, then every estimator; rows and facts."""
    start = time.perf_counter()
    net = train_network(proto.train, root)
    bar("trained the sweep's network")
    same, other = draws(proto.train, net.task)
    curv, ref_seconds = exact_dense(net, same)
    ref = DenseReference.of(curv)
    bar("reference F")
    twin, twin_seconds = exact_dense(net, other)
    rows = [row_of(proto.train, twin, ref, net, twin_seconds, DISJOINT)]
    del twin  # one P x P copy besides F at a time
    bar("reference noise")
    for config in proto.fits:
        t0 = time.perf_counter()
        fitted = fit_curvature(config, net.model, net.task, 0, torch.device("cpu"))
        rows.append(row_of(config, fitted, ref, net, time.perf_counter() - t0, "same"))
        bar(rows[-1]["estimator"])
    facts = {
        "experiment_sequence": SEQUENCE,
        "network": model_text(proto.train.to_dict()),
        "optimizer": proto.train.optimizer,
        "parameters": net.layout.numel,
        "n_inputs": proto.train.fisher_samples,
        "epochs": proto.train.epochs,
        "data": proto.train.data,
        "seed": proto.train.seed,
        "train_seconds": net.seconds,
        "reference": {
            "fit_seconds": ref_seconds,
            "nbytes": curv.nbytes,
            "dtype": str(curv.matrix.dtype).removeprefix("torch."),
            "trace": ref.trace,
            "eigen_seconds": ref.seconds,
            "eigen_residual": ref.residual,
            "eigenvalues": ref.values.tolist(),
        },
        "draw_overlap": len(set(same.tolist()) & set(other.tolist())),
        "k": [K_SMALL, K_LARGE],
        "seconds": time.perf_counter() - start,
    }
    return {"rows": rows, "facts": facts}
