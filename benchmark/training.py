"""The one training step, used by the harness, the cost measurements and the pipeline timing alike.

``train_step`` is forward, mean cross-entropy, backward, then the regulariser's closed-form
gradient added to ``.grad`` (``Regulariser.add_gradients``: the same step as differentiating
loss + penalty, cheaper), the optimizer's step, then the regulariser's per-step hook
(``after_step``, e.g. for path-integral methods). ``train_task`` runs epochs of it over seeded
mini-batches of one training split and reports a non-finite loss where it happens.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import Split

if TYPE_CHECKING:
    from .methods.base import Regulariser

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, targets) -> 0-dim loss``."""
OPTIMIZERS = ("adam", "sgd")
CHECK_EVERY = 50
"""Steps between checks for a non-finite loss (each check synchronises with the device)."""


def plain_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``: the forward of a single-head model."""
    return model(x)


def make_optimizer(name: str, lr: float, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or SGD over the trainable parameters, learning rate ``lr``.

    The multi-tensor (``foreach``) implementation: the same update as the per-parameter loop,
    about 30% faster per step for the tutorial network on a CPU.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, foreach=True)
    if name != "adam":
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return torch.optim.Adam(params, lr=lr, foreach=True)


@dataclass
class Batches:
    """Seeded mini-batches of one training split, as float tensors on the device."""

    split: Split
    batch_size: int
    order: torch.Generator
    device: torch.device

    def epoch(self) -> list[torch.Tensor]:
        """One pass in a fresh seeded order (index batches; tensors are built by ``get``)."""
        n = len(self.split)
        perm = torch.randperm(n, generator=self.order)
        return [perm[i : i + self.batch_size] for i in range(0, n, self.batch_size)]

    def get(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (float, [0, 1]) and labels of ``index``, on the device."""
        x = self.split.float_inputs(index).to(self.device, non_blocking=True)
        return x, self.split.targets[index].to(self.device, non_blocking=True)

    def first(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``batch_size`` inputs in storage order (a fixed batch, e.g. for timing)."""
        return self.get(torch.arange(min(self.batch_size, len(self.split))))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    regulariser: Regulariser | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> torch.Tensor:
    """One optimizer step on the loss (+ the regulariser); returns the loss (detached).

    The loss is the mean cross-entropy unless ``loss_fn`` says otherwise (runs trained together
    sum their own means, see ``benchmark.grouped``). The regulariser's gradient enters in closed
    form after the loss's backward; its ``after_step`` hook runs after the optimizer's step. A
    regulariser without terms yet (the first task) costs nothing.
    """
    loss = loss_fn(forward(model, x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    active = regulariser is not None and regulariser.active
    if active:
        regulariser.add_gradients(model)
    optimizer.step()
    if regulariser is not None:
        regulariser.after_step(model)
    return loss.detach()


def train_task(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    epochs: int,
    regulariser: Regulariser | None,
    forward: Forward,
    bar: tqdm | None = None,
) -> tuple[float | None, bool]:
    """Train on one split for ``epochs``. Returns (mean loss of the last epoch, diverged)."""
    mean = None
    label = getattr(bar, "desc", "").removesuffix(": ")
    for epoch in range(epochs):
        if bar is not None and not bar.disable and epochs > 1:
            bar.set_description(f"{label} epoch {epoch + 1}/{epochs}", refresh=False)
        running = torch.zeros((), device=batches.device)
        steps = batches.epoch()
        for i, index in enumerate(steps):
            x, y = batches.get(index)
            running += train_step(model, optimizer, forward, x, y, regulariser)
            if (i + 1) % CHECK_EVERY == 0 and not torch.isfinite(running):
                return None, True
            if bar is not None:
                bar.update(1)
        mean = float(running) / len(steps)
        if not math.isfinite(mean):
            return None, True
    return mean, False


def first_non_finite(model: nn.Module) -> str | None:
    """The name of the first floating-point parameter or buffer holding NaN/inf, else None."""
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
