r"""EWC and L2: a curvature fitted after each task, penalised by ``estimators.EWC``.

After task t the curvature :math:`F_t` of the run's estimator (``identity`` for ``l2``) is fitted
on ``fisher_samples`` seeded training inputs of the task, through the task's own head; the
penalty :math:`\frac{\lambda}{2}\sum_t (\theta - \theta_t)^\top F_t (\theta - \theta_t)` (or its
online form) enters training through its closed-form gradient. ``CurvatureRegulariser`` serves
any method whose importance is a curvature object (``mas`` supplies another fit function).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

import estimators

from ..models import task_forward
from ..seeds import generator

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..tasks import Task

Fit = Callable[["RunConfig", nn.Module, "Task", int, torch.device], estimators.Curvature]
"""``fit(config, model, task, index, device) -> curvature`` after task ``index``."""


def fit_inputs(
    config: RunConfig, task: Task, index: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``fisher_samples`` seeded training inputs (and labels) of task ``index``."""
    n = min(config.fisher_samples, len(task.train))
    pick = torch.randperm(len(task.train), generator=generator(config.seed, "fisher", index))[:n]
    return task.train.float_inputs(pick).to(device), task.train.targets[pick].to(device)


def fit_curvature(
    config: RunConfig, model: nn.Module, task: Task, index: int, device: torch.device
) -> estimators.Curvature:
    """The task's curvature from the run's estimator (identity for l2), through its head."""
    name = "identity" if config.estimator is None else str(config.estimator)
    options = dict(config.estimator_options)
    options["forward"] = task_forward(model, task.head)
    if name.endswith("-mc"):
        options["generator"] = generator(config.seed, "mc-labels", index)
    x, y = fit_inputs(config, task, index, device)
    return estimators.make(name, **options).fit(model, x, y)


class CurvatureRegulariser:
    """A curvature per task (from ``fit``) and the EWC penalty over them."""

    def __init__(self, config: RunConfig, fit: Fit = fit_curvature) -> None:
        self.config = config
        self.fit = fit
        self.penalty = estimators.EWC(config.lam, config.mode, config.gamma)
        self.last_structure: str | None = None
        """``Curvature.summary`` of the curvature fitted last (for the record)."""
        self.last_trace: float | None = None
        """tr(F) of the curvature fitted last (for the record)."""
        self.fitted: list[estimators.Curvature] | None = None
        """When a list (``benchmark.diagnostics``), each fitted curvature is appended to it, as
        fitted: a dense one as a copy, since the penalty merges later dense terms into it."""

    @property
    def active(self) -> bool:
        """Whether a task has been consolidated."""
        return bool(self.penalty)

    def consolidate(self, model: nn.Module, task: Task, index: int, device: torch.device) -> int:
        """Fit task ``index``'s curvature and add it to the penalty; returns its bytes."""
        curvature = self.fit(self.config, model, task, index, device)
        self.last_structure = curvature.summary
        self.last_trace = float(curvature.trace())
        nbytes = curvature.nbytes  # before consolidate, which may merge it into another term
        if self.fitted is not None:
            dense = isinstance(curvature, estimators.DenseCurvature)
            self.fitted.append(copy.deepcopy(curvature) if dense else curvature)
        self.penalty.consolidate(model, curvature)
        return nbytes

    def add_gradients(self, model: nn.Module) -> None:
        """The penalty's closed-form gradient, added to ``.grad``."""
        self.penalty.add_gradients(model)

    def after_step(self, model: nn.Module) -> None:
        """Nothing to do per step."""
