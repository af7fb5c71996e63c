"""The only training loop: train each task, evaluate every task, consolidate; time it all.

Per task t of a sequence: train (``epochs`` passes over the task's training split in seeded
order, Adam by default, its state carried over as in the source tutorial) with the method's
regulariser (``benchmark.methods``: for EWC the penalty of the tasks before it); evaluate every
task of the sequence (row t of the accuracy matrices, on the validation and the test split);
measure one plain training step and the extra time the regulariser costs per step, on copies;
consolidate task t (fit its curvature or importance, timed) into the regulariser, except after
the last task, whose curvature no training would use. A ``joint``
method trains once on the union of all tasks (the upper bound: one row). The training step
itself is ``training.train_step``, the one every measurement uses too.

BatchNorm is an explicit axis: ``bn = update`` keeps its running statistics updating in every
task (train mode); ``bn = freeze`` puts BatchNorm layers in eval mode after the first task, so
their statistics stay those of task 1 (no Fisher penalty protects buffers).

Divergence is checked where it happens: a training loss that becomes NaN/inf (checked every
``training.CHECK_EVERY`` steps and at the end of each epoch), a parameter or buffer that is
non-finite after a task's last update, or non-finite logits in the evaluation stop the run; it
is recorded as ``diverged`` with what it had and a message saying where.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import diagnostics, provenance
from .config import RESULTS_VERSION, RunConfig
from .device import resolve_device, sync
from .methods import METHODS, Regulariser
from .models import make_model, task_forward
from .records import RunRecord
from .seeds import generator, seed_hash
from .tasks import Task, TaskSequence, build_sequence
from .training import Batches, Forward, first_non_finite, make_optimizer, train_step, train_task

EVAL_BATCH = 1000
PROBE_STEPS = 15
"""Interleaved steps with and without the regulariser to measure its cost per step."""


def set_train_mode(model: nn.Module, task_index: int, bn: str) -> None:
    """Train mode; with ``bn = freeze``, BatchNorm layers stay in eval mode after task 1."""
    model.train()
    if bn == "freeze" and task_index > 0:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


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


class _GradientOnly:
    """A regulariser's gradient without its per-step hook: what the cost probe may run."""

    def __init__(self, regulariser: Regulariser) -> None:
        self.inner = regulariser
        self.active = regulariser.active

    def add_gradients(self, model: nn.Module) -> None:
        self.inner.add_gradients(model)

    def after_step(self, model: nn.Module) -> None:
        """Not run on the probe's copy: it would change the regulariser's own state."""


def probe_step_cost(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    regulariser: Regulariser | None,
    forward: Forward,
) -> tuple[float, float | None]:
    """Median ms of a plain step and the regulariser's extra ms per step, on copies (interleaved).

    Measuring never touches the experiment: the steps are taken on deep copies of the model and
    of the optimizer's state, under a forked random state, with the regulariser's gradient only
    (its per-step hook would change its state), so a run's record is the same with and without
    the probe (tested).
    """
    model_c = copy.deepcopy(model)
    opt_c = type(optimizer)(
        [p for p in model_c.parameters() if p.requires_grad], **optimizer.defaults
    )
    # load_state_dict keeps the tensors it is given (Adam's step, exp_avg, exp_avg_sq): without
    # the deep copy the probe's steps would advance the training optimizer's state.
    opt_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    x, y = batches.first()
    penalty = _GradientOnly(regulariser) if regulariser is not None and regulariser.active else None
    plain, with_penalty = [], []
    devices = [batches.device] if batches.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # a model that draws random numbers
        for _ in range(PROBE_STEPS):
            for store, pen in ((plain, None), (with_penalty, penalty)):
                if store is with_penalty and penalty is None:
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


def sequence_of(config: RunConfig, root: str | None, download: bool) -> TaskSequence:
    """The task sequence a run trains on (its sequence, seed, data and limits)."""
    return build_sequence(
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
    are then None); the accuracies and losses are the same either way. With
    ``config.diagnostics`` a sequential run that finished gets ``record.diagnostics``
    (``benchmark.diagnostics``), measured after its clock and peak memory were read.
    """
    started, t0 = provenance.now(), time.perf_counter()
    provenance.reset_peak_memory()
    device = resolve_device(config.device)
    sequence = sequence_of(config, root, download)
    torch.manual_seed(seed_hash(config.seed, "init"))
    model = make_model(config.model, sequence.n_outputs, sequence.n_heads, config.model_options).to(
        device
    )
    record = RunRecord(run_id=config.run_id, config=config.to_dict())
    record.tasks = [t.name for t in sequence.tasks]
    joint = METHODS[config.method].joint
    kept = diagnostics.Kept() if config.diagnostics and not joint else None
    if joint:
        _run_joint(config, model, sequence, device, record)
    else:
        _run_sequential(config, model, sequence, device, record, progress, on_task_end, probe, kept)
    record.total_seconds = time.perf_counter() - t0
    record.peak_rss_mb = provenance.peak_rss_mb()
    if kept is not None and record.status == "ok":  # after the clock: not part of the run's cost
        record.diagnostics = diagnostics.measure(model, sequence, kept, record, config.seed)
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
    kept: diagnostics.Kept | None = None,
) -> None:
    """Task after task: train, check, probe the step cost, evaluate, consolidate.

    ``kept`` (diagnostics on) receives the state after each task but the last, and the
    curvatures fitted (``diagnostics.Kept``).
    """
    build = METHODS[config.method].regulariser
    regulariser = build(config) if build is not None else None
    if kept is not None:
        kept.watch(config, regulariser)
    optimizer = make_optimizer(config.optimizer, config.lr, model)
    for t, task in enumerate(sequence.tasks):
        if t > 0 and config.reset_optimizer:
            optimizer = make_optimizer(config.optimizer, config.lr, model)
        forward = task_forward(model, task.head)
        batches = Batches(task.train, config.batch_size, generator(config.seed, "order", t), device)
        where = f"task {t + 1} ({task.name})"
        if not _train(
            config, model, optimizer, batches, regulariser, forward, t, sequence, record, progress
        ):
            return
        step, extra = (
            probe_step_cost(model, optimizer, batches, regulariser, forward)
            if probe
            else (None, None)
        )
        record.step_ms.append(step)
        record.penalty_ms.append(extra)
        if not _evaluate(model, sequence, device, record, f"after {where}"):
            return
        if on_task_end is not None:
            on_task_end(t, model)
        last = t == len(sequence.tasks) - 1
        if kept is not None and not last:
            kept.keep(model)
        consolidate(regulariser if not last else None, model, task, t, device, record)


def consolidate(
    regulariser: Regulariser | None,
    model: nn.Module,
    task: Task,
    t: int,
    device: torch.device,
    record: RunRecord,
) -> None:
    """After task ``t``: fit its curvature into ``regulariser`` (timed) and record its facts.

    Without a regulariser (unpenalised methods, and after the last task, whose curvature no
    training would use) the record gets 0 seconds, 0 bytes and no representation or trace.
    """
    if regulariser is None:
        record.estimate_seconds.append(0.0)
        record.curvature_bytes.append(0)
        record.representations.append(None)
        record.curvature_trace.append(None)
        return
    sync(device)
    start = time.perf_counter()
    nbytes = regulariser.consolidate(model, task, t, device)
    sync(device)
    record.estimate_seconds.append(time.perf_counter() - start)
    record.curvature_bytes.append(nbytes)
    record.representations.append(getattr(regulariser, "last_structure", None))
    record.curvature_trace.append(getattr(regulariser, "last_trace", None))


def _train(
    config: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    regulariser: Regulariser | None,
    forward: Forward,
    t: int,
    sequence: TaskSequence,
    record: RunRecord,
    progress: bool,
) -> bool:
    """Train task ``t`` (timed); False when it diverged (then the record says where)."""
    task, n_tasks = sequence.tasks[t], len(sequence.tasks)
    set_train_mode(model, t, config.bn)
    steps = config.epochs * math.ceil(len(task.train) / config.batch_size)
    label = f"{config.label} task {t + 1}/{n_tasks}"
    bar = tqdm(total=steps, desc=label, leave=False, disable=not progress)
    sync(batches.device)
    start = time.perf_counter()
    loss, diverged = train_task(model, optimizer, batches, config.epochs, regulariser, forward, bar)
    sync(batches.device)
    record.train_seconds.append(time.perf_counter() - start)
    bar.close()
    record.train_loss.append(loss)
    where = f"task {t + 1} ({task.name})"
    if diverged:
        _diverged(record, n_tasks, f"the training loss became non-finite during {where}")
        return False
    bad = first_non_finite(model)
    if bad is not None:
        _diverged(record, n_tasks, f"{bad} became non-finite by the end of {where}")
        return False
    return True


def _evaluate(
    model: nn.Module, sequence: TaskSequence, device: torch.device, record: RunRecord, when: str
) -> bool:
    """Append a row to both accuracy matrices (timed); False when the logits were non-finite."""
    start = time.perf_counter()
    val, test = evaluate(model, sequence, device)
    record.eval_seconds.append(time.perf_counter() - start)
    if None in val or None in test:
        _diverged(record, len(sequence.tasks), f"the logits became non-finite {when}")
        return False
    record.acc_val.append(val)
    record.acc_test.append(test)
    return True


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
    optimizer = make_optimizer(config.optimizer, config.lr, model)
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
    if not _evaluate(model, sequence, device, record, "after joint training"):
        return
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
