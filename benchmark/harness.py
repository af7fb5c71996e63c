"""The only training loop: train each task, evaluate every task, fit the curvature; time it all.

Per task t of a sequence: train (``epochs`` passes over the task's training split in seeded
order, Adam by default, its state carried over as in the source tutorial), with the penalty of
the tasks before it; evaluate every task of the sequence (row t of the accuracy matrices, on the
validation and the test split); measure one plain training step and the extra time the penalty
costs per step; fit the curvature of task t (the estimator's own timing) and add it to the
penalty. ``joint`` trains once on the union of all tasks (the upper bound: one row).

BatchNorm is an explicit axis: ``bn = update`` keeps its running statistics updating in every
task (train mode); ``bn = freeze`` puts BatchNorm layers in eval mode after the first task, so
their statistics stay those of task 1 (no Fisher penalty protects buffers).

Divergence is checked where it happens: a training loss that becomes NaN/inf (checked every
``CHECK_EVERY`` steps and at the end of each epoch), a parameter or buffer that is non-finite
after a task's last update, or non-finite logits in the evaluation stop the run; it is recorded
as ``diverged`` with what it had and a message saying where.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import estimators

from . import provenance
from .config import RESULTS_VERSION, RunConfig, resolve_device
from .models import make_model, task_forward
from .penalty import EWCPenalty
from .records import RunRecord
from .seeds import generator, seed_hash
from .tasks import Task, TaskSequence, build_sequence

EVAL_BATCH = 1000
CHECK_EVERY = 50
"""Steps between checks for a non-finite loss (each check synchronises with the device)."""
PROBE_STEPS = 15
"""Interleaved steps with and without the penalty to measure its cost per step."""

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_train_mode(model: nn.Module, task_index: int, bn: str) -> None:
    """Train mode; with ``bn = freeze``, BatchNorm layers stay in eval mode after task 1."""
    model.train()
    if bn == "freeze" and task_index > 0:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or SGD over the trainable parameters, learning rate ``config.lr``.

    The multi-tensor (``foreach``) implementation: the same update as the per-parameter loop,
    about 30% faster per step for the tutorial network on a CPU.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, foreach=True)
    return torch.optim.Adam(params, lr=config.lr, foreach=True)


@dataclass
class Batches:
    """Seeded mini-batches of one task's training split, as float tensors on the device."""

    task: Task
    batch_size: int
    order: torch.Generator
    device: torch.device

    def epoch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One pass in a fresh seeded order (index batches; tensors are built lazily below)."""
        n = len(self.task.train)
        perm = torch.randperm(n, generator=self.order)
        return [perm[i : i + self.batch_size] for i in range(0, n, self.batch_size)]  # type: ignore[misc]

    def get(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (float, [0, 1]) and labels of ``index``, on the device."""
        split = self.task.train
        x = split.float_inputs(index).to(self.device, non_blocking=True)
        return x, split.targets[index].to(self.device, non_blocking=True)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    penalty: EWCPenalty | None,
) -> torch.Tensor:
    """One optimizer step on cross-entropy (+ penalty); returns the cross-entropy (detached).

    The penalty enters through its closed-form gradient, added after the loss's backward
    (``EWCPenalty.add_gradients``): the same step as differentiating loss + penalty, cheaper.
    """
    loss = F.cross_entropy(forward(model, x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if penalty:
        penalty.add_gradients(model)
    optimizer.step()
    return loss.detach()


def train_task(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    epochs: int,
    penalty: EWCPenalty | None,
    forward: Forward,
    bar: tqdm | None = None,
) -> tuple[float | None, bool]:
    """Train on one task. Returns (mean loss of the last epoch, diverged)."""
    mean = None
    label = getattr(bar, "desc", "").removesuffix(": ")
    for epoch in range(epochs):
        if bar is not None and not bar.disable and epochs > 1:
            bar.set_description(f"{label} epoch {epoch + 1}/{epochs}", refresh=False)
        running = torch.zeros((), device=batches.device)
        steps = batches.epoch()
        for i, index in enumerate(steps):
            x, y = batches.get(index)
            running += train_step(model, optimizer, forward, x, y, penalty)
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


@torch.no_grad()
def accuracy(model: nn.Module, task: Task, split: str, device: torch.device) -> float | None:
    """Top-1 accuracy on ``task``'s ``split`` (``val`` or ``test``), eval mode, its own head.

    None when any logit is NaN/inf: an accuracy from non-finite logits means nothing.
    """
    data = getattr(task, split)
    forward = task_forward(model, task.head)
    correct = 0
    for start in range(0, len(data), EVAL_BATCH):
        index = torch.arange(start, min(len(data), start + EVAL_BATCH))
        x = data.float_inputs(index).to(device)
        logits = forward(model, x)
        if not bool(torch.isfinite(logits).all()):
            return None
        correct += int((logits.argmax(-1).cpu() == data.targets[index]).sum())
    return correct / len(data)


def evaluate(
    model: nn.Module, sequence: TaskSequence, device: torch.device
) -> tuple[list[float | None], list[float | None]]:
    """Validation and test accuracy on every task (one row of each matrix); restores the mode.

    An entry is None where the task's logits were non-finite (see ``accuracy``).
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        val = [accuracy(model, t, "val", device) for t in sequence.tasks]
        test = [accuracy(model, t, "test", device) for t in sequence.tasks]
    finally:
        for m, training in modes:
            m.training = training
    return val, test


def fit_curvature(
    config: RunConfig, model: nn.Module, task: Task, index: int, device: torch.device
) -> estimators.Curvature:
    """The task's curvature on ``fisher_samples`` seeded training inputs (identity for l2)."""
    name = "identity" if config.method == "l2" else str(config.estimator)
    options = dict(config.estimator_options)
    options["forward"] = task_forward(model, task.head)
    if name.endswith("-mc"):
        options["generator"] = generator(config.seed, "mc-labels", index)
    n = min(config.fisher_samples, len(task.train))
    pick = torch.randperm(len(task.train), generator=generator(config.seed, "fisher", index))[:n]
    x = task.train.float_inputs(pick).to(device)
    y = task.train.targets[pick].to(device)
    return estimators.make(name, **options).fit(model, x, y)


def probe_step_cost(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    penalty: EWCPenalty | None,
    forward: Forward,
) -> tuple[float, float | None]:
    """Median ms of a plain step and the penalty's extra ms per step, on copies (interleaved).

    Measuring never touches the experiment: the steps are taken on deep copies of the model and
    of the optimizer's state, under a forked random state, so a run's record is the same with and
    without the probe (tested).
    """
    model_c = copy.deepcopy(model)
    opt_c = type(optimizer)(
        [p for p in model_c.parameters() if p.requires_grad], **optimizer.defaults
    )
    # load_state_dict keeps the tensors it is given (Adam's step, exp_avg, exp_avg_sq): without
    # the deep copy the probe's steps would advance the training optimizer's state.
    opt_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    x, y = batches.get(torch.arange(min(batches.batch_size, len(batches.task.train))))
    plain, with_penalty = [], []
    devices = [batches.device] if batches.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # a model that draws random numbers
        for _ in range(PROBE_STEPS):
            for store, pen in ((plain, None), (with_penalty, penalty)):
                if store is with_penalty and not penalty:
                    continue
                sync(batches.device)
                start = time.perf_counter()
                train_step(model_c, opt_c, forward, x, y, pen)
                sync(batches.device)
                store.append((time.perf_counter() - start) * 1e3)
    step = statistics.median(plain[2:])
    extra = statistics.median(with_penalty[2:]) - step if with_penalty else None
    return step, extra


OnTaskEnd = Callable[[int, nn.Module], None]


def run(
    config: RunConfig,
    *,
    root: str | None = None,
    download: bool = False,
    progress: bool = False,
    on_task_end: OnTaskEnd | None = None,
    probe: bool = True,
) -> RunRecord:
    """Run one config end to end and return its record (status ok or diverged).

    ``on_task_end(t, model)`` is called after task t is trained and evaluated, before its
    curvature is fitted (e.g. to keep the weights for an offline study); it must not change
    the model. ``probe = False`` skips the per-step cost probe (``step_ms`` and ``penalty_ms``
    are then None); the accuracies and losses are the same either way.
    """
    started, t0 = provenance.now(), time.perf_counter()
    provenance.reset_peak_memory()
    device = resolve_device(config.device)
    sequence = build_sequence(
        config.sequence,
        n_tasks=config.n_tasks,
        seed=config.seed,
        data=config.data,
        root=root,
        val_fraction=config.val_fraction,
        train_limit=config.train_limit,
        eval_limit=config.eval_limit,
        download=download,
    )
    torch.manual_seed(seed_hash(config.seed, "init"))
    model = make_model(config.model, sequence.n_outputs, sequence.n_heads).to(device)
    record = RunRecord(run_id=config.run_id, config=config.to_dict())
    record.tasks = [t.name for t in sequence.tasks]
    if config.method == "joint":
        _run_joint(config, model, sequence, device, record)
    else:
        _run_sequential(config, model, sequence, device, record, progress, on_task_end, probe)
    record.total_seconds = time.perf_counter() - t0
    record.peak_rss_mb = provenance.peak_rss_mb()
    record.provenance = {
        **provenance.machine(str(device)),
        "git_sha": provenance.git_sha(),
        "results_version": RESULTS_VERSION,
        "command": provenance.command_line(),
        "started": started,
        "finished": provenance.now(),
    }
    return record


def _run_sequential(
    config: RunConfig,
    model: nn.Module,
    sequence: TaskSequence,
    device: torch.device,
    record: RunRecord,
    progress: bool,
    on_task_end: OnTaskEnd | None = None,
    probe: bool = True,
) -> None:
    penalty = (
        EWCPenalty(config.lam, config.mode, config.gamma)
        if config.method in ("l2", "ewc")
        else None
    )
    optimizer = make_optimizer(config, model)
    n_tasks = len(sequence.tasks)
    for t, task in enumerate(sequence.tasks):
        if t > 0 and config.reset_optimizer:
            optimizer = make_optimizer(config, model)
        forward = task_forward(model, task.head)
        batches = Batches(task, config.batch_size, generator(config.seed, "order", t), device)
        set_train_mode(model, t, config.bn)
        steps = config.epochs * math.ceil(len(task.train) / config.batch_size)
        bar = tqdm(
            total=steps,
            desc=f"{config.label} task {t + 1}/{n_tasks}",
            leave=False,
            disable=not progress,
        )
        sync(device)
        start = time.perf_counter()
        loss, diverged = train_task(model, optimizer, batches, config.epochs, penalty, forward, bar)
        sync(device)
        record.train_seconds.append(time.perf_counter() - start)
        bar.close()
        record.train_loss.append(loss)
        where = f"task {t + 1} ({task.name})"
        if diverged:
            _diverged(record, n_tasks, f"the training loss became non-finite during {where}")
            return
        bad = first_non_finite(model)
        if bad is not None:
            _diverged(record, n_tasks, f"{bad} became non-finite by the end of {where}")
            return
        step, extra = (
            probe_step_cost(model, optimizer, batches, penalty, forward) if probe else (None, None)
        )
        record.step_ms.append(step)
        record.penalty_ms.append(extra)
        start = time.perf_counter()
        val, test = evaluate(model, sequence, device)
        record.eval_seconds.append(time.perf_counter() - start)
        if None in val or None in test:
            _diverged(record, n_tasks, f"the logits became non-finite after {where}")
            return
        record.acc_val.append(val)
        record.acc_test.append(test)
        if on_task_end is not None:
            on_task_end(t, model)
        if penalty is None:
            record.estimate_seconds.append(0.0)
            record.curvature_bytes.append(0)
            continue
        sync(device)
        start = time.perf_counter()
        curvature = fit_curvature(config, model, task, t, device)
        sync(device)
        record.estimate_seconds.append(time.perf_counter() - start)
        record.curvature_bytes.append(curvature.nbytes)
        penalty.consolidate(model, curvature)


def _diverged(record: RunRecord, n_tasks: int, message: str) -> None:
    """Mark the run diverged: a row of None closes the accuracy matrices."""
    record.status = "diverged"
    record.message = message
    record.acc_val.append([None] * n_tasks)
    record.acc_test.append([None] * n_tasks)


def _run_joint(
    config: RunConfig,
    model: nn.Module,
    sequence: TaskSequence,
    device: torch.device,
    record: RunRecord,
) -> None:
    """Train once on the union of all tasks (each input through its task's head)."""
    n = len(sequence.tasks)
    optimizer = make_optimizer(config, model)
    xs = torch.cat([t.train.inputs for t in sequence.tasks])
    ys = torch.cat([t.train.targets for t in sequence.tasks])
    heads = torch.cat([torch.full((len(t.train),), t.head) for t in sequence.tasks])
    order = generator(config.seed, "order", "joint")
    model.train()
    start = time.perf_counter()
    running, steps = torch.zeros((), device=device), 0
    for _ in range(config.epochs):
        running.zero_()
        perm = torch.randperm(len(ys), generator=order)
        chunks = perm.split(config.batch_size)
        for index in chunks:
            x = xs[index].to(device=device, dtype=torch.float32).div_(255.0)
            loss = _joint_loss(model, x, ys[index].to(device), heads[index], sequence.n_heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach()
        steps = len(chunks)
        if not torch.isfinite(running):
            record.train_seconds.append(time.perf_counter() - start)
            _diverged(record, n, "the training loss became non-finite during joint training")
            return
    record.train_seconds.append(time.perf_counter() - start)
    record.train_loss.append(float(running) / max(1, steps))
    bad = first_non_finite(model)
    if bad is not None:
        _diverged(record, n, f"{bad} became non-finite by the end of joint training")
        return
    start = time.perf_counter()
    val, test = evaluate(model, sequence, device)
    record.eval_seconds.append(time.perf_counter() - start)
    if None in val or None in test:
        _diverged(record, n, "the logits became non-finite after joint training")
        return
    record.acc_val.append(val)
    record.acc_test.append(test)
    record.estimate_seconds.append(0.0)
    record.curvature_bytes.append(0)
    record.step_ms.append(None)
    record.penalty_ms.append(None)


def _joint_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, heads: torch.Tensor, n_heads: int
) -> torch.Tensor:
    """Mean cross-entropy; with several heads the trunk runs once and each head on its inputs."""
    if n_heads == 1:
        return F.cross_entropy(model(x), y)
    features = model.trunk(x)
    total = x.new_zeros(())
    for h in heads.unique().tolist():
        mask = (heads == h).to(x.device)
        total = total + F.cross_entropy(model.heads[h](features[mask]), y[mask], reduction="sum")
    return total / len(y)
