r"""What the cost measurements time: inputs, networks, reference computations, training steps.

- Inputs: ``synthetic`` (seeded uniform images and random labels; the cost of a fit or a step
  does not depend on pixel values) and ``load_data`` (the first N MNIST training inputs).
- Networks: ``tutorial_network`` (``tutorial-mlp`` seeded with 0, BatchNorm running statistics
  averaged over a few hundred inputs in train mode without gradient, then eval mode; nothing is
  trained) and ``seeded`` (any network under the same seed, eval mode).
- References: the FLOOR (``floor_pass``: one batched forward + backward of the mean
  cross-entropy) and the NAIVE loop (``naive_diagonal``: one backward per input); an estimator's
  fit as a ``TimedCall`` (``estimator_call``).
- Training steps: ``Variant``, one model copy with the harness's optimizer, stepped by the
  harness's own ``training.train_step``, plain or with the EWC penalty ``estimators.EWC``. The
  penalty enters that step as the harness's regularisers do: its closed-form gradient
  :math:`\lambda \sum_t F_t (\theta - \theta_t)` added to ``.grad`` after the loss's backward
  (``EWC.add_gradients``); no quadratic form is recorded or differentiated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import estimators

from ..data import load_split
from ..models import make_model
from ..training import make_optimizer, plain_forward, train_step
from .measure import NotTimed, SetupError, TimedCall

MODEL = "tutorial-mlp"
SYNTHETIC_SEED = 0
"""Seed of the synthetic inputs and of every network's initialisation."""
BN_WARMUP_INPUTS = 500
"""Inputs run through the network in train mode to set BatchNorm's running statistics."""
BN_WARMUP_BATCH = 100
NAIVE_MAX_INPUTS = 1000
"""The naive loop runs on at most this many inputs; its time is scaled linearly to N."""
PENALTY_BATCH = 100
PENALTY_LAMBDA = 100.0
PENALTY_LR = 1e-3
PENALTY_OPTIMIZER = "adam"
PENALTY_WARMUP_STEPS = 5
"""Untimed rounds of training steps before the timed ones."""


# -- inputs ------------------------------------------------------------------------------------


def synthetic(
    n: int, classes: int = 10, device: str = "cpu", seed: int = SYNTHETIC_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniform random inputs ``[n, 1, 28, 28]`` and labels in ``[0, classes)``, seeded."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.rand(n, 1, 28, 28, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return inputs.to(device), labels.to(device)


def load_data(
    n: int, data_root: str | None, use_synthetic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` MNIST training inputs and labels (or ``n`` synthetic ones), on CPU.

    Raises:
        DataNotFoundError: MNIST is missing under the data root.
        SetupError: MNIST has fewer than ``n`` training inputs.
    """
    if use_synthetic:
        return synthetic(n)
    split = load_split("mnist", train=True, root=data_root)
    if len(split) < n:
        raise SetupError(f"MNIST has {len(split):,} training inputs; asked for N = {n:,}")
    # New tensors (float32 in [0, 1] and a label copy), independent of the cached split.
    return split.float_inputs(torch.arange(n)), split.targets[:n].clone()


# -- networks ----------------------------------------------------------------------------------


def seeded(build: Callable[[], nn.Module], device: str) -> nn.Module:
    """``build()`` under a fixed seed, moved to ``device``, in eval mode."""
    torch.manual_seed(SYNTHETIC_SEED)
    return build().to(device).eval()


def tutorial_network(bn_inputs: torch.Tensor, device: str) -> nn.Module:
    """``tutorial-mlp`` seeded with 0, BatchNorm statistics from ``bn_inputs``, in eval mode.

    The running statistics are the plain average over batches of ``BN_WARMUP_BATCH`` inputs
    (momentum None while they are collected, then restored).
    """
    model = seeded(lambda: make_model(MODEL), device)
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
    """How many of ``n_loaded`` inputs set the BatchNorm statistics (``tutorial_network``)."""
    return min(BN_WARMUP_INPUTS, n_loaded)


def synthetic_tutorial_network(device: str) -> nn.Module:
    """``tutorial_network`` with BatchNorm statistics from ``BN_WARMUP_INPUTS`` synthetic inputs."""
    return tutorial_network(synthetic(BN_WARMUP_INPUTS, device=device)[0], device)


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


def describe_curvature(curvature: estimators.Curvature) -> dict[str, Any]:
    """What a row keeps of a fitted curvature."""
    return {"nbytes": int(curvature.nbytes), "structure": curvature.structure}


def describe_tensors(tensors: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Bytes of a list of tensors (the naive loop's diagonal)."""
    return {"nbytes": sum(t.numel() * t.element_size() for t in tensors)}


TIMED_OPTIONS: dict[str, dict[str, Any]] = {
    f"lowrank-{mode}": {"rank": 200} for mode in ("exact", "mc", "empirical")
}
"""Options the cost tables time an estimator with (the protocol's largest low-rank rank)."""
MAX_TIMED_N: dict[str, int] = {f"lowrank-{mode}": 1000 for mode in ("exact", "mc", "empirical")}
"""Largest N an estimator is timed at: each low-rank fit is ``power_iterations + 1`` passes over
the N x C implicit rows (linear in N), so N = 10,000 would add minutes per row and say nothing
the N = 1,000 row does not."""


def timed_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options a row's fit runs with: ``TIMED_OPTIONS`` of ``name``, then a variant's."""
    return {**TIMED_OPTIONS.get(name, {}), **(options or {})}


def estimator_call(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    options: dict[str, Any] | None = None,
    label: str | None = None,
) -> TimedCall:
    """``est.fit(model, x, y)`` as a timed call; an error of ``estimators.make`` surfaces in it.

    ``timed_options`` configure the estimator (a variant's ``options`` over ``TIMED_OPTIONS``);
    beyond ``MAX_TIMED_N`` inputs the row says so. The row is called ``label`` (default:
    ``name``).
    """
    label = label or name
    try:
        limit = MAX_TIMED_N.get(name)
        if limit is not None and x.shape[0] > limit:
            raise NotTimed(
                f"not timed above N = {limit:,} (linear in N; see the N = {limit:,} table)"
            )
        est = estimators.make(name, **timed_options(name, options))
    except Exception as err:  # recorded by the warm-up, the run continues
        failed = err

        def fail() -> estimators.Curvature:
            raise failed

        return TimedCall(label, fail, describe_curvature)
    return TimedCall(label, lambda: est.fit(model, x, y), describe_curvature)


def naive_call(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TimedCall:
    """The naive loop on ``naive_inputs(N)`` inputs, as a timed call."""
    m = naive_inputs(x.shape[0])
    return TimedCall("naive", lambda: naive_diagonal(model, x[:m], y[:m]), describe_tensors)


# -- training steps, plain or with the EWC penalty ---------------------------------------------


class PenaltyRegulariser:
    """``estimators.EWC`` as ``training.train_step``'s regulariser (no per-step hook)."""

    def __init__(self, penalty: estimators.EWC) -> None:
        self.penalty = penalty

    @property
    def active(self) -> bool:
        """Whether a task has been consolidated."""
        return bool(self.penalty)

    def add_gradients(self, model: nn.Module) -> None:
        """The penalty's closed-form gradient, added to ``.grad`` after the loss's backward."""
        self.penalty.add_gradients(model)

    def after_step(self, model: nn.Module) -> None:
        """Nothing to do per step."""


@dataclass
class Variant:
    """One training setup of a penalty measurement: its own model copy, optimizer and penalty.

    Attributes:
        name: ``plain``, or ``ESTIMATOR MODE T=TASKS``.
        model: a copy of the measured network, in train mode.
        optimizer: the harness's optimizer over the copy's parameters.
        penalty: the EWC penalty with ``tasks`` consolidated tasks, or None (plain training).
        estimator: the estimator of the penalty's curvature, None for ``plain``.
        mode: ``separate`` or ``online``, None for ``plain``.
        tasks: consolidated tasks T (0 for ``plain``).
        times: seconds of each timed step.
        regulariser: ``penalty`` as ``training.train_step`` takes it (None for ``plain``).
    """

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    penalty: estimators.EWC | None = None
    estimator: str | None = None
    mode: str | None = None
    tasks: int = 0
    times: list[float] = field(default_factory=list)
    regulariser: PenaltyRegulariser | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.penalty is not None:
            self.regulariser = PenaltyRegulariser(self.penalty)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One training step on ``(x, y)``: the harness's ``training.train_step``."""
        train_step(self.model, self.optimizer, plain_forward, x, y, self.regulariser)

    @property
    def penalty_bytes(self) -> int:
        """Bytes of the penalty's curvatures (0 for plain training)."""
        return 0 if self.penalty is None else int(self.penalty.nbytes)


def make_variant(
    base: nn.Module,
    curvature: estimators.Curvature | None = None,
    estimator: str | None = None,
    mode: str = "separate",
    tasks: int = 1,
    lam: float = PENALTY_LAMBDA,
) -> Variant:
    """A copy of ``base`` in train mode with the harness's Adam; with ``curvature``, the penalty.

    Without a curvature: the plain step. With one: ``estimators.EWC(lam, mode)`` with ``tasks``
    tasks consolidated, each anchored at the copy's weights with ``curvature``.
    """
    model = copy.deepcopy(base).train()
    optimizer = make_optimizer(PENALTY_OPTIMIZER, PENALTY_LR, model)
    if curvature is None:
        return Variant("plain", model, optimizer)
    penalty = estimators.EWC(lam, mode=mode)
    for _ in range(tasks):
        penalty.consolidate(model, curvature)
    name = f"{estimator} {mode} T={tasks}"
    return Variant(name, model, optimizer, penalty, estimator, mode, tasks)


def optimizer_description() -> str:
    """The optimizer of every variant, as records state it."""
    return f"Adam(lr={PENALTY_LR:g})"
