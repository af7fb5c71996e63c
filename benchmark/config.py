"""Run configuration: one frozen, validated, hashable description of a run.

``RunConfig.run_id`` is a hash of every field that can change a number or whether the run can
run at all: every setting, the device kind (``cpu`` or ``cuda``; ``auto`` counts as what it
resolves to on this machine, and ``cuda:1`` as ``cuda``), and ``RESULTS_VERSION``, so a record
made on a GPU is never reused by a CPU rerun, and records of a harness whose arithmetic has since
changed are never reused. Validation happens before any training and says what was wrong and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

import estimators

from .device import DEVICES, device_kind, resolve_device  # noqa: F401  (re-exported)
from .methods import METHODS as METHOD_SPECS
from .methods import MODES, label_of, method_names
from .models import MODELS, check_model
from .records import SETTINGS_ADDED_LATER
from .tasks import SEQUENCES, check_n_tasks

METHODS = method_names()
BN_MODES = ("update", "freeze")
OPTIMIZERS = ("adam", "sgd")
PENALISED = tuple(n for n in METHODS if METHOD_SPECS[n].penalised)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
"""Runs train in float32: lambda, the learning rate and friends must be representable in it."""

RESULTS_VERSION = 3
"""Part of every run id; raised whenever the harness's arithmetic changes, so that a results
folder never mixes records of two harnesses. Its history (``RESULTS_VERSIONS``) is in the report."""
RESULTS_VERSIONS = {
    1: "first harness",
    2: "the per-step cost probe runs on deep copies of the model and the optimizer's state "
    "(before, its 15-30 timing steps after each task shared and advanced Adam's state, so "
    "measuring changed the training it measured); non-finite parameters or logits after a "
    "task make the run diverged; the device kind is part of the run id",
    3: "no curvature is fitted after the last task (no training would use it; accuracies are "
    "unchanged, estimation times and bytes of the last task are 0); records carry tr(F) of "
    "each fitted curvature (curvature_trace)",
}


@dataclass(frozen=True)
class RunConfig:
    """One run: a sequence, a model, a method and how to train. See ``FIELD_HELP``."""

    sequence: str = "mnist-fmnist"
    data: str = "real"
    n_tasks: int | None = None
    model: str = "tutorial-mlp"
    model_options: dict[str, Any] = field(default_factory=dict)
    method: str = "ewc"
    estimator: str | None = "diag-exact"
    mode: str = "separate"
    gamma: float = 1.0
    lam: float = 0.0
    bn: str = "freeze"
    epochs: int = 4
    batch_size: int = 100
    lr: float = 1e-3
    lr_grid: list[float] = field(default_factory=list)
    optimizer: str = "adam"
    reset_optimizer: bool = False
    fisher_samples: int = 1000
    estimator_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    val_fraction: float = 0.1
    train_limit: int | None = None
    eval_limit: int | None = None
    device: str = "cpu"
    diagnostics: bool = False

    def __post_init__(self) -> None:
        validate(self)

    # -- identity ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON values."""
        return dataclasses.asdict(self)

    def key(self) -> dict[str, Any]:
        """What the run id hashes: every field, the device as its kind, ``RESULTS_VERSION``.

        Settings added after records exist (``records.SETTINGS_ADDED_LATER``) are left out
        while at their default, so the ids of earlier runs do not change.
        """
        d = self.to_dict()
        d["device"] = device_kind(self.device)
        d["results_version"] = RESULTS_VERSION
        for name, default in SETTINGS_ADDED_LATER.items():
            if d[name] == default:
                del d[name]
        return d

    @property
    def run_id(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON of ``key()``."""
        text = json.dumps(self.key(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a dict; unknown keys raise ValueError naming the valid ones."""
        unknown = sorted(set(data) - set(FIELD_HELP))
        if unknown:
            raise ValueError(
                f"unknown run setting(s) {', '.join(map(repr, unknown))}; "
                f"valid settings: {', '.join(FIELD_HELP)}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def label(self) -> str:
        """Method label: ``baseline``, ``l2``, ``ewc diag-exact``, ``ewc-online ...``, ``mas``."""
        return label_of(self.to_dict())


FIELD_HELP: dict[str, str] = {
    "sequence": f"task sequence: {', '.join(SEQUENCES)}",
    "data": "real (MNIST/FashionMNIST from the data root) or synthetic (tiny stand-ins, for tests)",
    "n_tasks": "number of tasks (permuted/rotated: any >= 1; split: <= 5); default per sequence",
    "model": f"network: {', '.join(MODELS)}",
    "model_options": "network options (benchmark.models), e.g. hidden=400 for mlp",
    "method": f"{', '.join(METHODS)} (see benchmark.methods)",
    "estimator": "curvature estimator for ewc (estimators.names()); l2 uses identity",
    "mode": "ewc penalty: separate (one term per past task) or online (decayed running curvature)",
    "gamma": "online decay of the old curvature, in [0, 1]",
    "lam": "penalty strength >= 0: (lam/2) sum_t (theta - theta_t)^T F_t (theta - theta_t)",
    "bn": "BatchNorm statistics in later tasks: update (train mode) or freeze (eval after task 1)",
    "epochs": "training epochs per task",
    "batch_size": "training mini-batch size",
    "lr": "learning rate",
    "lr_grid": "the learning rates lr was chosen from, with lambda, on the selection seeds (a "
    "study's lrs; [] = lr fixed); runs that differ only in lr within one grid compete in "
    "selection (benchmark.selection)",
    "optimizer": f"{', '.join(OPTIMIZERS)} (its state carries over between tasks unless reset)",
    "reset_optimizer": "fresh optimizer state for each task",
    "fisher_samples": "training inputs of a task used to fit its curvature",
    "estimator_options": "extra estimator options, e.g. {mc_samples = 1}",
    "seed": "root seed: permutations, rotations, splits, init, data order, mc sampling",
    "val_fraction": "fraction of each training set held out for validation (lambda selection)",
    "train_limit": "use at most this many training inputs per task (quick runs); default all",
    "eval_limit": "evaluate on at most this many validation/test inputs per task; default all",
    "device": "cpu, cuda or auto (its kind, cpu or cuda, is part of the run id)",
    "diagnostics": "after the last task, record why old tasks were kept or forgotten "
    "(benchmark.diagnostics: the drift's exact and fitted Fisher quadratics per layer, hidden "
    "feature drift, accuracy with the old output layer put back); sequential runs only",
}


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"setting {name!r} = {value!r} is invalid: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(c: RunConfig) -> None:
    """Check every field; raise ValueError saying what is wrong and what is allowed."""
    choices = {
        "sequence": SEQUENCES,
        "data": ("real", "synthetic"),
        "model": MODELS,
        "method": METHODS,
        "mode": MODES,
        "bn": BN_MODES,
        "optimizer": OPTIMIZERS,
        "device": DEVICES,
    }
    for name, allowed in choices.items():
        value = getattr(c, name)
        if value not in allowed and not (name == "device" and str(value).startswith("cuda:")):
            _fail(name, value, f"choose one of {', '.join(allowed)}")
    for name in ("epochs", "batch_size", "fisher_samples"):
        if not _is_int(getattr(c, name)) or getattr(c, name) < 1:
            _fail(name, getattr(c, name), "a positive integer")
    for name in ("n_tasks", "train_limit", "eval_limit"):
        value = getattr(c, name)
        if value is not None and (not _is_int(value) or value < 1):
            _fail(name, value, "a positive integer, or omitted for the default")
    if not _is_int(c.seed) or c.seed < 0:
        _fail("seed", c.seed, "an integer >= 0")
    if not _is_num(c.lam) or not 0 <= c.lam <= FLOAT32_MAX:
        _fail("lam", c.lam, f"a finite number in [0, {FLOAT32_MAX:.4g}] (runs train in float32)")
    if not _is_num(c.lr) or not 0 < c.lr <= FLOAT32_MAX:
        _fail("lr", c.lr, f"a finite number in (0, {FLOAT32_MAX:.4g}] (runs train in float32)")
    _validate_lr_grid(c)
    if not _is_num(c.gamma) or not 0 <= c.gamma <= 1:
        _fail("gamma", c.gamma, "a number in [0, 1]")
    if not _is_num(c.val_fraction) or not 0 < c.val_fraction < 1:
        _fail("val_fraction", c.val_fraction, "a number strictly between 0 and 1")
    for name in ("reset_optimizer", "diagnostics"):
        if not isinstance(getattr(c, name), bool):
            _fail(name, getattr(c, name), "true or false")
    for name in ("model_options", "estimator_options"):
        if not isinstance(getattr(c, name), dict):
            _fail(name, getattr(c, name), "a table of options")
    check_n_tasks(c.sequence, c.n_tasks)  # ValueErrors that say what the sequence takes
    check_model(c.model, c.model_options)  # and what the model's options are
    _validate_method(c)


def _validate_lr_grid(c: RunConfig) -> None:
    """Empty, or two or more distinct positive learning rates that include ``lr``."""
    grid = c.lr_grid
    if not isinstance(grid, list):
        _fail("lr_grid", grid, "a list of learning rates (or [] when lr is fixed)")
    if not grid:
        return
    if len(grid) < 2 or len(set(grid)) != len(grid):
        _fail("lr_grid", grid, "two or more distinct learning rates, or [] (a fixed lr)")
    if not all(_is_num(v) and 0 < v <= FLOAT32_MAX for v in grid):
        _fail("lr_grid", grid, f"learning rates in (0, {FLOAT32_MAX:.4g}]")
    if c.lr not in grid:
        _fail("lr", c.lr, f"one of the run's lr_grid {grid}")


def _validate_method(c: RunConfig) -> None:
    """The method's own rules (``benchmark.methods``): estimator, strength, mode, options."""
    method = METHOD_SPECS[c.method]
    if method.takes_estimator:
        if c.estimator not in estimators.names():
            _fail("estimator", c.estimator, f"one of {', '.join(estimators.names())}")
        estimators.make(c.estimator, **c.estimator_options)  # unknown options fail here
        if c.mode == "online" and not estimators.supports_online(
            c.estimator, **c.estimator_options
        ):
            _fail(
                "mode",
                c.mode,
                f"online accumulation is not defined for {c.estimator}: "
                f"{estimators.online_refusal(c.estimator, **c.estimator_options)} (or use "
                "mode = 'separate')",
            )
        if c.mode != "online" and c.estimator_options.get("online_rule") is not None:
            _fail("estimator_options", c.estimator_options, "online_rule only with mode = 'online'")
    elif c.estimator is not None:
        _fail("estimator", c.estimator, f"method {c.method!r} takes no estimator")
    if c.estimator_options and not method.takes_estimator:
        _fail("estimator_options", c.estimator_options, f"method {c.method!r} takes no estimator")
    if not method.penalised and c.lam != 0:
        _fail("lam", c.lam, f"method {c.method!r} has no penalty: leave lam at 0")
    if c.mode not in method.modes:
        _fail("mode", c.mode, f"method {c.method!r} allows {', '.join(method.modes)}")
