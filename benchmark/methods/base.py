"""What a method is: a spec (``Method``) and, for penalised methods, a ``Regulariser``.

A method's spec says everything the rest of the benchmark needs to know about it (its label,
whether it has a strength lambda, whether it takes a curvature estimator, its modes, whether it
trains on all tasks at once, how to build its regulariser); nothing outside ``benchmark.methods``
tests method names. A regulariser is what training sees: after each task it consolidates (fits
its importance on the task's data and anchors at the current weights); during training it adds
its closed-form gradient after the loss's backward and may act after each optimizer step.

Adding a method = one spec in ``benchmark/methods/__init__.py`` plus, if it penalises, one
regulariser (or only an importance function, as ``mas`` does: its importance is a diagonal
curvature and the EWC penalty object does the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..tasks import Task


class Regulariser(Protocol):
    """What training needs from a penalised method (see ``training.train_step``).

    Attributes:
        active: whether there is anything to penalise yet (False before the first task ends).
    """

    active: bool

    def consolidate(self, model: nn.Module, task: Task, index: int, device: torch.device) -> int:
        """After task ``index``: fit the importance on ``task``, anchor; returns its bytes."""

    def add_gradients(self, model: nn.Module) -> None:
        """Add the penalty's gradient to the parameters' ``.grad`` (after the loss's backward)."""

    def after_step(self, model: nn.Module) -> None:
        """Per-step hook, after the optimizer's step (path-integral methods accumulate here)."""


LABEL_OPTIONS = ("rank", "factors", "layers", "output_curvature", "online_rule")
"""Estimator options that are part of a method's label (they change the structure itself):
``rank`` of ``lowrank-*``, ``factors`` and ``layers`` of ``kfac-*`` (the ablation variants),
``output_curvature`` of ``full-exact`` (the averaged-output-curvature control), ``online_rule``
of ``kfac-*``/``ekfac-*`` (how online EWC combines tasks: ``ewc-online kfac-exact
online_rule=nearest``)."""


def label_value(value: Any) -> str:
    """An option's value as a label writes it: a list of layers as ``1,4``, others as ``str``."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


@dataclass(frozen=True)
class Method:
    """One method of the benchmark.

    Attributes:
        name: the ``method`` setting (``baseline``, ``l2``, ``ewc``, ...).
        summary: one line for help texts and reports.
        penalised: it has a strength ``lam`` (chosen on validation over a grid).
        takes_estimator: it takes a curvature estimator (labels ``ewc <estimator>``).
        modes: the penalty modes it allows (``separate``, ``online``).
        joint: it trains once on the union of all tasks (the upper bound; one matrix row).
        regulariser: builds the regulariser of a run (None: plain training).
        order: its place in reports (smaller first).
    """

    name: str
    summary: str
    penalised: bool = False
    takes_estimator: bool = False
    modes: tuple[str, ...] = ("separate",)
    joint: bool = False
    regulariser: Callable[[RunConfig], Regulariser] | None = None
    order: int = 50

    def label(self, config: Mapping[str, Any]) -> str:
        """``baseline``, ``l2``, ``ewc diag-exact``, ``ewc-online diag-exact``, ``mas-online``.

        Estimator options that make another structure (``LABEL_OPTIONS``: the rank of
        ``lowrank-*``, the variants of ``kfac-*`` and ``full-exact``) follow as ``key=value``, in
        that order: ``ewc lowrank-exact rank=50``, ``ewc kfac-exact factors=a-diag layers=hidden``,
        ``ewc full-exact output_curvature=mean``.
        """
        text = self.name + ("-online" if config.get("mode") == "online" else "")
        if not self.takes_estimator:
            return text
        options = config.get("estimator_options") or {}
        shown = [f"{k}={label_value(options[k])}" for k in LABEL_OPTIONS if k in options]
        return " ".join([text, str(config.get("estimator")), *shown])
