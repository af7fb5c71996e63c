"""Estimators: fit a curvature to a model and inputs. The grid crosses structure and label mode.

``GridEstimator`` combines one ``Accumulator`` (the structure: how curvature is stored, see
``diag``, ``kfac``, ``full``) with one ``LabelMode`` (how the expectation over labels is taken, see
``labels``); ``FisherPass`` (see ``fitting``) produces what both need, chunk by chunk.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from .curvature import Curvature
from .fitting import Capture, FisherPass, Forward, Plan, default_forward, eval_mode, make_plan
from .labels import LabelMode
from .layout import ParamLayout


class Estimator(ABC):
    """Fits a ``Curvature``. Implement ``_fit``; ``fit`` validates and guards the model's state."""

    needs_targets: bool = False

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.options = options

    @property
    def forward(self) -> Forward:
        """The forward function ``(model, inputs) -> logits``."""
        return self.options.get("forward") or default_forward

    def fit(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None = None
    ) -> Curvature:
        """Estimate F on ``inputs`` ``[N, ...]`` (and ``targets`` ``[N]``, long, where used).

        The model runs in eval mode under ``torch.enable_grad``; each module's training flag is
        restored afterwards; parameters, buffers and ``.grad`` are left untouched.
        """
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        layout = ParamLayout.of(model)
        inputs, targets = self._check_data(inputs, targets, layout)
        with eval_mode(model), torch.enable_grad():
            return self._fit(model, inputs, targets, layout)

    @abstractmethod
    def _fit(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        layout: ParamLayout,
    ) -> Curvature:
        """Estimate F; inputs are on the model's device and dtype, targets validated."""

    def check_memory(self, model: nn.Module, n_inputs: int, n_classes: int) -> None:
        """Refuse before any computation when fitting ``n_inputs`` inputs would exceed the budget.

        For a caller that wants to know before training (a sweep's preflight): the model is only
        read for its parameter layout. Structures whose size does not grow with N never refuse.

        Raises:
            FisherMemoryError: with the bytes the representation would need.
        """
        return

    def _check_data(
        self, inputs: torch.Tensor, targets: torch.Tensor | None, layout: ParamLayout
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or inputs.shape[0] < 1:
            raise ValueError("inputs must be a tensor [N, ...] with at least one input")
        n = inputs.shape[0]
        if inputs.is_floating_point():
            inputs = inputs.to(device=layout.device, dtype=layout.dtype)
        else:
            inputs = inputs.to(layout.device)
        if targets is None:
            if self.needs_targets:
                raise ValueError(
                    f"estimator {self.name!r} uses the dataset labels: pass targets [N]"
                )
            return inputs, None
        if not isinstance(targets, torch.Tensor) or targets.shape != (n,):
            shape = (
                tuple(targets.shape)
                if isinstance(targets, torch.Tensor)
                else type(targets).__name__
            )
            raise ValueError(
                f"targets must be a tensor of shape [{n}] (one label per input), got {shape}"
            )
        if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise ValueError(f"targets must hold integer class labels, got dtype {targets.dtype}")
        return inputs, targets.to(device=layout.device, dtype=torch.long)

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.options.items() if k not in ("forward", "generator")}
        return f"{type(self).__name__}({self.name!r}, {shown})"


def check_labels(targets: torch.Tensor | None, n_classes: int) -> None:
    """Labels must lie in ``[0, C)``."""
    if (
        targets is not None
        and targets.numel()
        and (targets.min() < 0 or targets.max() >= n_classes)
    ):
        raise ValueError(
            f"targets must lie in [0, {n_classes}) for a model with {n_classes} classes; "
            f"got values in [{int(targets.min())}, {int(targets.max())}]"
        )


class Accumulator(ABC):
    """A structure's running sums over chunks. Implement ``update`` and ``result``.

    Captures carry gradients already scaled by 1/sqrt(N), so sums over chunks are means.
    """

    def __init__(
        self, layout: ParamLayout, plan: Plan, columns: int, n_total: int, options: dict[str, Any]
    ) -> None:
        self.layout = layout
        self.plan = plan
        self.columns = columns
        self.n_total = n_total
        self.options = options

    def chunk_size(self) -> int:
        """Inputs per batched pass."""
        return self.options["chunk_size"]

    @classmethod
    def check_memory(
        cls, layout: ParamLayout, columns: int, n_inputs: int, options: dict[str, Any]
    ) -> None:
        """Raise ``FisherMemoryError`` if ``n_inputs`` inputs would not fit; default: always fit."""
        return

    @abstractmethod
    def update(self, cap: Capture) -> None:
        """Add one chunk's contribution."""

    @abstractmethod
    def result(self) -> Curvature:
        """The fitted curvature."""


class GridEstimator(Estimator):
    """One point of the grid: a structure (``Accumulator``) crossed with a ``LabelMode``."""

    def __init__(
        self,
        name: str,
        accumulator: type[Accumulator],
        labels: LabelMode,
        options: dict[str, Any],
    ) -> None:
        super().__init__(name, options)
        self.accumulator = accumulator
        self.labels = labels
        self.needs_targets = labels.needs_targets

    def check_memory(self, model: nn.Module, n_inputs: int, n_classes: int) -> None:
        """The structure's own rule, with this label mode's columns per input."""
        columns = self.labels.columns(n_classes)
        self.accumulator.check_memory(ParamLayout.of(model), columns, n_inputs, self.options)

    def _fit(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        layout: ParamLayout,
    ) -> Curvature:
        n = inputs.shape[0]
        plan = make_plan(model, self.forward, inputs[:1], layout)
        check_labels(targets, plan.n_classes)
        fisher_pass = FisherPass(model, self.forward, self.labels, plan, n)
        acc = self.accumulator(layout, plan, fisher_pass.columns, n, self.options)
        step = acc.chunk_size()
        for start in range(0, n, step):
            chunk = slice(start, min(n, start + step))
            acc.update(
                fisher_pass.capture(inputs[chunk], None if targets is None else targets[chunk])
            )
        return acc.result()
