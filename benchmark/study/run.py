"""The approximation study: how good is each Fisher approximation, and does it matter?

Ground truth (part A): small models trained through the harness on MNIST (``mlp-16``, 784-16-10,
12,730 parameters, and ``cnn``); the reference is ``full-exact`` (its exact factor) on ``n_ref``
MNIST training inputs, and every estimator is fitted on the same inputs and compared with it
(``approx``). Part B: error against that reference as the number of inputs N grows (seeded input
subsets). Part C: the sampled (mc) estimators against their exact counterparts as ``mc_samples``
grows. Part D: the bias of the legacy ``diag-batched`` estimator, as its ratio to
``diag-empirical`` for several batch sizes, on the tutorial network. Part E
(``sweep_network``): every estimator the sweep ran on its main comparison's network (the MLP
784-16-16-10 of ``experiment``), with the sweep's settings, against the exact dense Fisher on the
sweep's own inputs, and that reference's own noise from a disjoint draw; STUDY.md joins its
metrics with the sweep's outcomes (``benchmark.report.study``). Part F (``online_part``): each
online KFAC rule against the exact online sum of the tasks' Kronecker blocks, on that network.

Each part returns plain rows (dicts) that ``benchmark.report.study`` turns into ``study.csv``,
STUDY.md and figures; ``run_study`` times each part.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from torch import nn
from tqdm.auto import tqdm

import estimators
from estimators import Curvature
from estimators.layout import ParamLayout

from .. import provenance
from ..config import RunConfig
from ..seeds import generator
from . import approx
from .online_part import online_rules_part
from .sweep_network import protocol, sweep_network, train_network

BIG_BUDGET = 16 * 1024**3
ALL = tuple(estimators.names())
CONVERGENCE = (
    "diag-exact",
    "diag-mc",
    "diag-empirical",
    "kfac-exact",
    "kfac-mc",
    "kfac-empirical",
    "full-mc",
    "full-empirical",
)
MC_PAIRS = (("diag-mc", "diag-exact"), ("kfac-mc", "kfac-exact"), ("full-mc", "full-exact"))


@dataclass(frozen=True)
class StudyConfig:
    """What the study runs. ``quick`` shrinks everything for tests."""

    data: str = "real"
    root: str | None = None
    model: str = "mlp-16"
    extra_models: tuple[str, ...] = ("cnn",)
    extra_n_ref: int = 300
    epochs: int = 1
    n_ref: int = 1000
    n_grid: tuple[int, ...] = (100, 300, 1000)
    seeds: tuple[int, ...] = (0, 1, 2)
    mc_grid: tuple[int, ...] = (1, 4, 16, 64)
    full_mc_max: int = 16
    top_k: int = 20
    directions: int = 20
    batch_sizes: tuple[int, ...] = (1, 10, 30, 100, 300, 1000)
    batched_n: int = 3000
    tutorial_epochs: int = 4
    experiment: str = "default"
    network: str = "mlp"
    network_options: dict[str, Any] = field(default_factory=lambda: {"hidden": 16})
    network_overrides: dict[str, Any] = field(default_factory=dict)
    results: str | None = "results/default"
    online_tasks: int = 5
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


QUICK = {
    "n_ref": 20,
    "extra_n_ref": 10,
    "n_grid": (10, 20),
    "seeds": (0, 1),
    "mc_grid": (1, 8),
    "top_k": 4,
    "directions": 3,
    "batch_sizes": (1, 10, 60),
    "batched_n": 120,
    "tutorial_epochs": 1,
    "network_overrides": {"model_options": {"hidden": 4}, "epochs": 1, "fisher_samples": 20},
    "online_tasks": 3,
}


# -- models and data --------------------------------------------------------------------------
@dataclass
class Trained:
    """A model at the end of task A, the drift to the end of task B, and task A's inputs."""

    model: nn.Module
    layout: ParamLayout
    drift: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    seconds: float


def train(cfg: StudyConfig, model_name: str, epochs: int) -> Trained:
    """Train ``model_name`` on mnist-fmnist without a penalty (seed 0, the harness's loop)."""
    config = RunConfig(
        data=cfg.data, model=model_name, method="baseline", estimator=None, epochs=epochs, seed=0
    )
    net = train_network(config, cfg.root)
    task = net.task.train
    return Trained(net.model, net.layout, net.drift, task.float_inputs(), task.targets, net.seconds)


def subset(trained: Trained, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded training inputs of task A."""
    pick = torch.randperm(len(trained.targets), generator=generator(seed, "study-inputs"))[:n]
    return trained.inputs[pick], trained.targets[pick]


def fit(
    name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, **options: Any
) -> tuple[Curvature, float]:
    """Fit ``name`` (mc seeded; full with a large budget); returns the curvature and seconds."""
    if name.endswith("-mc"):
        options.setdefault("generator", generator(seed, "study-mc", name))
    if name.startswith("full-"):
        options.setdefault("memory_budget", BIG_BUDGET)
        options.setdefault("representation", "factor")  # R x P: cheaper than P x P for R < P
    start = time.perf_counter()
    curv = estimators.make(name, **options).fit(model, x, y)
    return curv, time.perf_counter() - start


# -- metrics ------------------------------------------------------------------------------------
@dataclass
class Reference:
    """A reference curvature and its squared Frobenius norm, computed once."""

    curv: Curvature
    frob_sq: float

    @classmethod
    def of(cls, curv: Curvature) -> Reference:
        """Wrap ``curv``, computing its norm."""
        return cls(curv, approx.frobenius_sq(curv))


def errors(approx_c: Curvature, ref: Curvature, ref_sq: float) -> dict[str, float]:
    r"""Relative Frobenius error, raw and scale-free (``approx.frobenius_errors``).

    Scale-free: :math:`\min_s \|s\hat F - F\|_F / \|F\|_F = \sqrt{1 - \cos^2}`, what is
    left once lambda absorbs the scale.
    """
    a_sq, cross = approx.frobenius_sq(approx_c), approx.inner(approx_c, ref)
    rel, scale_free = approx.frobenius_errors(a_sq, cross, ref_sq)
    return {"rel_frobenius": rel, "scale_free_error": scale_free}


def compare_to_reference(
    curv: Curvature, reference: Reference, drift: torch.Tensor, directions: torch.Tensor
) -> dict[str, float]:
    """Frobenius (raw, scale-free), trace, and penalty errors on the drift and random directions."""
    ref = reference.curv
    if curv is ref:  # the reference against itself: exact, and no need to pay for the sums
        zero = dict.fromkeys(("rel_frobenius", "scale_free_error", "rel_trace"), 0.0)
        return {**zero, "drift_penalty_error": 0.0, "random_penalty_error": 0.0}
    rand = [abs(approx.relative_quadratic_error(curv, ref, d)) for d in directions]
    return {
        **errors(curv, ref, reference.frob_sq),
        "rel_trace": approx.relative_trace_error(curv, ref),
        "drift_penalty_error": approx.relative_quadratic_error(curv, ref, drift),
        "random_penalty_error": float(np.mean(rand)),
    }


def layer_blocks(model: nn.Module, layout: ParamLayout) -> list[torch.Tensor]:
    """Flat index sets of each module's own parameters (one block per layer)."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    blocks = []
    for m in model.modules():
        own = [names[id(p)] for p in m.parameters(recurse=False) if id(p) in names]
        if own:
            blocks.append(
                torch.cat([torch.arange(layout.slice(n).start, layout.slice(n).stop) for n in own])
            )
    return blocks


def _directions(layout: ParamLayout, k: int) -> torch.Tensor:
    g = generator(0, "study-directions")
    return torch.randn(k, layout.numel, generator=g, dtype=layout.dtype)


# -- parts --------------------------------------------------------------------------------------
def ground_truth(
    cfg: StudyConfig, trained: Trained, model: str, n_ref: int, bar: Callable[[str], None]
) -> dict[str, Any]:
    """Part A: every estimator against the exact Fisher (its exact factor) on the same inputs."""
    x, y = subset(trained, n_ref, 0)
    ref, ref_seconds = fit("full-exact", trained.model, x, y, 0)  # the exact factor: F = U^T U
    bar(f"{model} reference")
    start = time.perf_counter()
    ref_vals, ref_vecs = approx.top_eigen(ref, cfg.top_k)  # through the Gram matrix U U^T
    gram_seconds = time.perf_counter() - start
    start = time.perf_counter()
    eigsh(ref.as_linear_operator(), k=cfg.top_k, which="LA", return_eigenvectors=False)
    operator_seconds = time.perf_counter() - start
    reference = Reference.of(ref)
    dirs = _directions(trained.layout, cfg.directions)
    rows, spectra, curvs = [], {"full-exact (reference)": ref_vals.tolist()}, {"full-exact": ref}
    for name in ALL:
        curv, seconds = (
            (ref, ref_seconds) if name == "full-exact" else fit(name, trained.model, x, y, 0)
        )
        vals, vecs = approx.top_eigen(curv, cfg.top_k)
        row = {
            "part": "ground-truth",
            "model": model,
            "estimator": name,
            "n_inputs": n_ref,
            "seed": 0,
        }
        row.update(compare_to_reference(curv, reference, trained.drift, dirs))
        row.update(
            top_eigenvalue_ratio=float(vals[0] / ref_vals[0]),
            overlap_topk=approx.subspace_overlap(ref_vecs, vecs),
            fit_seconds=seconds,
            nbytes=curv.nbytes,
        )
        rows.append(row)
        spectra[name] = vals.tolist()
        if name in ("kfac-exact", "diag-exact"):
            curvs[name] = curv
        bar(f"{model} {name}")
    blocks = layer_blocks(trained.model, trained.layout)
    return {
        "rows": rows,
        "spectra": spectra,
        "off_block_share": approx.off_block_share(ref, blocks),
        "block_images": last_layer_images(curvs, blocks[-1]),
        "parameters": trained.layout.numel,
        "reference_rows": ref.factor.shape[0],
        "spectrum_seconds": {"gram": gram_seconds, "operator": operator_seconds},
        "reference": reference,
    }


def last_layer_images(curvs: dict[str, Curvature], idx: torch.Tensor) -> dict[str, list]:
    """The last layer's block of each curvature, as nested lists (for the figure)."""
    out = {}
    for name, c in curvs.items():
        p = c.numel
        cols = torch.zeros(p, len(idx), dtype=c.layout.dtype)
        cols[idx, torch.arange(len(idx))] = 1
        out[name] = c.matmat(cols)[idx].double().tolist()
    return out


def convergence(
    cfg: StudyConfig, trained: Trained, ref: Reference, bar: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Part B: error against the reference as N grows; part C: mc against exact as K grows."""
    rows = []
    dirs = _directions(trained.layout, 1)
    for n in cfg.n_grid:
        for seed in cfg.seeds:
            x, y = subset(trained, n, seed + 1000)  # other inputs than the reference's
            for name in CONVERGENCE:
                curv, seconds = fit(name, trained.model, x, y, seed)
                row = {
                    "part": "convergence-n",
                    "model": cfg.model,
                    "estimator": name,
                    "n_inputs": n,
                    "seed": seed,
                }
                row.update(
                    compare_to_reference(curv, ref, trained.drift, dirs), fit_seconds=seconds
                )
                rows.append(row)
            bar(f"N={n} seed={seed}")
    x, y = subset(trained, cfg.n_ref, 0)
    for mc_name, exact_name in MC_PAIRS:
        exact = (
            ref
            if exact_name == "full-exact"
            else Reference.of(fit(exact_name, trained.model, x, y, 0)[0])
        )
        for k in (k for k in cfg.mc_grid if mc_name != "full-mc" or k <= cfg.full_mc_max):
            for seed in cfg.seeds:
                curv, seconds = fit(mc_name, trained.model, x, y, seed, mc_samples=k)
                row = {
                    "part": "convergence-mc",
                    "model": cfg.model,
                    "estimator": mc_name,
                    "n_inputs": cfg.n_ref,
                    "seed": seed,
                    "mc_samples": k,
                    "against": exact_name,
                }
                row.update(
                    compare_to_reference(curv, exact, trained.drift, dirs), fit_seconds=seconds
                )
                rows.append(row)
        bar(mc_name)
    return rows


def batched_bias(cfg: StudyConfig, trained: Trained) -> list[dict[str, Any]]:
    """Part D: trace of diag-batched over trace of diag-empirical, per batch size."""
    x, y = subset(trained, cfg.batched_n, 0)
    emp = float(fit("diag-empirical", trained.model, x, y, 0)[0].trace())
    rows = []
    for b in cfg.batch_sizes:
        batched = float(fit("diag-batched", trained.model, x, y, 0, batch_size=b)[0].trace())
        rows.append(
            {
                "part": "batched-bias",
                "model": "tutorial-mlp",
                "estimator": "diag-batched",
                "n_inputs": cfg.batched_n,
                "seed": 0,
                "batch_size": b,
                "ratio_to_empirical": batched / emp,
            }
        )
    return rows


@contextmanager
def timed(times: dict[str, dict[str, Any]], part: str) -> Iterator[None]:
    """Add the block's wall time to ``times[part]`` (started: its first block's start)."""
    started, t0 = provenance.now(), time.perf_counter()
    yield
    entry = times.setdefault(part, {"started": started, "seconds": 0.0})
    entry["seconds"] += time.perf_counter() - t0
    entry["finished"] = provenance.now()


def _steps(cfg: StudyConfig, fits: int) -> int:
    """Progress steps: per model A's training, reference and estimators; B, C; D; E's."""
    models = 1 + len(cfg.extra_models)
    return models * (2 + len(ALL)) + len(cfg.n_grid) * len(cfg.seeds) + len(MC_PAIRS) + 5 + fits


def _provenance() -> dict[str, Any]:
    """The machine, the code's git SHA and the command line of this study run."""
    return {
        **provenance.machine(),
        "git_sha": provenance.git_sha(),
        "command": provenance.command_line(),
    }


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """All parts; returns rows and figure data with provenance and each part's times."""
    started, t0 = provenance.now(), time.perf_counter()
    provenance.pin_git_sha()
    overrides = {"data": cfg.data, **cfg.network_overrides}
    proto = protocol(cfg.experiment, cfg.network, cfg.network_options, overrides)
    progress = tqdm(total=_steps(cfg, len(proto.fits)), desc="study", unit="step")

    def bar(label: str) -> None:
        progress.set_postfix_str(label, refresh=False)
        progress.update(1)

    times: dict[str, dict[str, Any]] = {}
    with timed(times, "A"):
        small = train(cfg, cfg.model, cfg.epochs)
        bar(f"trained {cfg.model}")
        truth = {cfg.model: ground_truth(cfg, small, cfg.model, cfg.n_ref, bar)}
    with timed(times, "B-C"):
        reference = truth[cfg.model].pop("reference")
        rows = truth[cfg.model]["rows"] + convergence(cfg, small, reference, bar)
        del small, reference
    with timed(times, "A"):
        for extra in cfg.extra_models:
            trained = train(cfg, extra, cfg.epochs)
            bar(f"trained {extra}")
            truth[extra] = ground_truth(cfg, trained, extra, cfg.extra_n_ref, bar)
            truth[extra].pop("reference")
            rows += truth[extra]["rows"]
    with timed(times, "D"):
        tutorial = train(cfg, "tutorial-mlp", cfg.tutorial_epochs)
        bar("trained tutorial-mlp")
        rows += batched_bias(cfg, tutorial)
        tutorial_parameters = tutorial.layout.numel
        del tutorial
    with timed(times, "E"):
        network = sweep_network(proto, cfg.root, bar)
        rows += network["rows"]
    with timed(times, "F"):
        online = online_rules_part(proto.train, cfg.root, bar, cfg.online_tasks)
        rows += online["rows"]
    progress.close()
    return {
        "config": cfg.to_dict(),
        "rows": rows,
        "ground_truth": {m: {k: v for k, v in t.items() if k != "rows"} for m, t in truth.items()},
        "sweep_network": network["facts"],
        "online_rules": online["facts"],
        "parameters": {
            **{m: t["parameters"] for m, t in truth.items()},
            "tutorial-mlp": tutorial_parameters,
            network["facts"]["network"]: network["facts"]["parameters"],
        },
        "provenance": _provenance(),
        "parts": times,
        "started": started,
        "finished": provenance.now(),
        "duration_seconds": time.perf_counter() - t0,
    }
