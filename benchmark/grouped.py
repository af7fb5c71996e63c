"""Many runs per process: runs that differ only in lambda and seed, trained as one stacked model.

Small networks are dispatch-bound: one step of ten stacked copies costs far less than ten steps.
``run_group(configs)`` trains runs whose settings agree in everything but ``lam`` and ``seed``
(same sequence, model, method, estimator, optimizer, ...) together and returns one record per
run, as ``harness.run`` would:

- each run keeps its own initialisation (``seed_hash(seed, "init")``), tasks (its seed's
  sequence), data order (``generator(seed, "order", t)``) and regulariser (its lambda, its
  curvature fitted on its own seeded inputs after each task);
- the stacked model (``Stack``: parameters ``[S, ...]``, forward ``vmap``-ed over runs with
  ``torch.func.functional_call``) steps through the one training step (``training.train_step``)
  with a loss that sums the runs' own mean cross-entropies, so each run's gradient is exactly its
  own, and one optimizer whose elementwise update (Adam, SGD) is each run's own;
- the penalty gradient of each run is added into its slice of the stacked gradients
  (``estimators.EWC.add_gradients(..., grads=...)``);
- evaluation and consolidation run per run on an unstacked copy, through the harness's own code;
- a run that diverges is recorded as diverged and stops counting; the others go on.

Records agree with single runs up to float32 rounding, which Adam's normalised first steps can
amplify in directions that do not change the network's function (biases before BatchNorm have a
zero true gradient): outcomes agree, parameters need not (tested). The per-step cost probe is
not run in a group (``step_ms`` and ``penalty_ms`` are None); timings are the group's divided by
its size, and the record says the group size.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from estimators import EWC, StackedPenalty

from . import provenance
from .config import RESULTS_VERSION, RunConfig
from .device import resolve_device, sync
from .harness import _diverged, _evaluate, consolidate, sequence_of, set_train_mode
from .methods import METHODS, Regulariser
from .models import MultiHead, make_model
from .records import RunRecord
from .seeds import generator, seed_hash
from .selection import group_key
from .tasks import TaskSequence
from .training import CHECK_EVERY, Batches, make_optimizer, train_step


class GroupError(ValueError):
    """The configs cannot be trained as one group (the caller runs them one by one)."""


def can_group(configs: Sequence[RunConfig]) -> str | None:
    """Why ``configs`` cannot be one group, or None when they can."""
    if len({group_key(c.to_dict()) for c in configs}) > 1:
        return "they differ in more than lambda and seed"
    if METHODS[configs[0].method].joint:
        return "joint training has nothing to stack"
    if configs[0].diagnostics:
        return "diagnostics are measured by harness.run only (each run alone)"
    return None


class Stack(nn.Module):
    """S networks of one architecture as one module: parameters ``[S, ...]``, vmapped forward."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        params, buffers = stack_module_state(list(models))
        self.size = len(models)
        # The architecture, parameters on the meta device; not a submodule, so that moving the
        # stack moves only the stacked tensors. Its modes (BatchNorm train/eval) are the runs'.
        object.__setattr__(self, "base", copy.deepcopy(models[0]).to("meta"))
        self.names = list(params)
        self.buffer_names = list(buffers)
        self.stacked = nn.ParameterList(nn.Parameter(params[n].detach().clone()) for n in params)
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer{i}", buffers[name].detach().clone())

    def stacked_buffers(self) -> dict[str, torch.Tensor]:
        """The stacked buffers ``[S, ...]`` by their names in the architecture."""
        return {n: getattr(self, f"buffer{i}") for i, n in enumerate(self.buffer_names)}

    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Logits ``[S, B, C]`` of inputs ``[S, B, ...]``: run s's network on its inputs."""
        kwargs = {"head": head} if isinstance(self.base, MultiHead) else {}

        def one(p: dict, b: dict, xs: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (xs,), kwargs)

        return vmap(one)(
            dict(zip(self.names, self.stacked, strict=True)), self.stacked_buffers(), x
        )

    def params_of(self, s: int) -> dict[str, torch.Tensor]:
        """Run s's parameters (views into the stack)."""
        return {n: p[s] for n, p in zip(self.names, self.stacked, strict=True)}

    def grads_of(self, s: int) -> dict[str, torch.Tensor]:
        """Run s's gradients (views into the stacked gradients, created as zeros if absent)."""
        for p in self.stacked:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return {n: p.grad[s] for n, p in zip(self.names, self.stacked, strict=True)}

    def export(self, s: int, into: nn.Module) -> nn.Module:
        """Load run s's parameters and buffers into ``into`` (same architecture); returns it."""
        state = {n: p[s].detach() for n, p in zip(self.names, self.stacked, strict=True)}
        state.update({n: b[s] for n, b in self.stacked_buffers().items()})
        into.load_state_dict(state)
        return into


class GroupLoss:
    """Sum over runs of each run's mean cross-entropy; remembers the per-run losses."""

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum_s mean_b CE(logits[s, b], y[s, b])``: logits ``[S, B, C]``, labels ``[S, B]``."""
        s, b = y.shape
        per = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(s, b)
        self.last = per.mean(1).detach()
        return per.mean(1).sum()


class GroupRegulariser:
    """Each run's regulariser acting on its slice of the stack (``training.Regulariser``).

    When every run's regulariser is an EWC penalty (EWC, L2, MAS), their gradients are one
    ``estimators.StackedPenalty`` product per past task, batched over the runs; otherwise
    each run's penalty acts on its own slice, one after the other.
    """

    def __init__(self, stack: Stack, members: list[Regulariser | None]) -> None:
        self.stack = stack
        self.members = members
        penalties = [getattr(r, "penalty", None) for r in members]
        held = [p for p, r in zip(penalties, members, strict=True) if r is not None]
        self.stacked = StackedPenalty(penalties) if all(isinstance(p, EWC) for p in held) else None

    @property
    def active(self) -> bool:
        """Whether any run has something to penalise."""
        return any(r is not None and r.active for r in self.members)

    def add_gradients(self, model: nn.Module) -> None:
        """Each active run's penalty gradient, into its slice of the stacked gradients."""
        if self.stacked is not None:
            self.stack.grads_of(0)  # creates the stacked gradients where absent
            names = self.stack.names
            params = dict(zip(names, self.stack.stacked, strict=True))
            grads = {n: p.grad for n, p in zip(names, self.stack.stacked, strict=True)}
            self.stacked.add_gradients(params, grads)
            return
        for s, reg in enumerate(self.members):
            if reg is not None and reg.active:
                penalty = getattr(reg, "penalty", None)
                if penalty is None:
                    raise GroupError(f"{type(reg).__name__} cannot act on a slice of a stack")
                penalty.add_gradients(self.stack.params_of(s), grads=self.stack.grads_of(s))

    def after_step(self, model: nn.Module) -> None:
        """Nothing per step (the members' hooks would need their own slices)."""


def run_group(
    configs: Sequence[RunConfig], *, root: str | None = None, download: bool = False
) -> list[RunRecord]:
    """Train ``configs`` together; one record per config, in order (see the module docstring).

    Raises:
        GroupError: the configs cannot be one group (differ in more than lambda and seed, joint
            training, diagnostics on, tasks of different sizes across seeds).
    """
    why = can_group(configs)
    if why:
        raise GroupError(f"these runs cannot be trained together: {why}")
    started, t0 = provenance.now(), time.perf_counter()
    provenance.reset_peak_memory()
    first = configs[0]
    device = resolve_device(first.device)
    sequences = [sequence_of(c, root, download) for c in configs]
    _check_sizes(sequences)
    models = []
    for c, seq in zip(configs, sequences, strict=True):
        torch.manual_seed(seed_hash(c.seed, "init"))
        models.append(make_model(c.model, seq.n_outputs, seq.n_heads, c.model_options).to(device))
    records = [RunRecord(run_id=c.run_id, config=c.to_dict()) for c in configs]
    for r, seq in zip(records, sequences, strict=True):
        r.tasks = [t.name for t in seq.tasks]
    _train(configs, sequences, models, records, device)
    total = time.perf_counter() - t0
    for r in records:
        r.total_seconds = total / len(configs)
        r.peak_rss_mb = provenance.peak_rss_mb()
        r.provenance = {
            **provenance.machine(str(device)),
            "git_sha": provenance.git_sha(),
            "results_version": RESULTS_VERSION,
            "command": provenance.command_line(),
            "started": started,
            "finished": provenance.now(),
            "group_size": len(configs),
        }
    return records


def _check_sizes(sequences: Sequence[TaskSequence]) -> None:
    """Runs step together: every run's task t must hold as many training inputs."""
    for t in range(len(sequences[0].tasks)):
        sizes = {len(seq.tasks[t].train) for seq in sequences}
        if len(sizes) > 1:
            raise GroupError(
                f"task {t + 1} has {sorted(sizes)} training inputs across the runs' seeds: they "
                "cannot step together"
            )


def _train(
    configs: Sequence[RunConfig],
    sequences: Sequence[TaskSequence],
    models: list[nn.Module],
    records: list[RunRecord],
    device: torch.device,
) -> None:
    """Task after task: train the stack, then evaluate and consolidate each run on its own."""
    first, n_tasks = configs[0], len(sequences[0].tasks)
    build = METHODS[first.method].regulariser
    regs: list[Regulariser | None] = [build(c) if build else None for c in configs]
    stack = Stack(models).to(device)
    group_reg = GroupRegulariser(stack, regs)
    optimizer = make_optimizer(first.optimizer, first.lr, stack)
    alive = [True] * len(configs)
    for t in range(n_tasks):
        if t > 0 and first.reset_optimizer:
            optimizer = make_optimizer(first.optimizer, first.lr, stack)
        _train_task(stack, optimizer, configs, sequences, t, group_reg, records, alive)
        for s, (seq, r) in enumerate(zip(sequences, records, strict=True)):
            if not alive[s]:
                continue
            r.step_ms.append(None)
            r.penalty_ms.append(None)
            model = stack.export(s, models[s])
            if not _evaluate(model, seq, device, r, f"after task {t + 1} ({seq.tasks[t].name})"):
                alive[s] = False
                continue
            reg = regs[s] if t < n_tasks - 1 else None  # the last task's would go unused
            consolidate(reg, model, seq.tasks[t], t, device, r)
        if not any(alive):
            return


def _train_task(
    stack: Stack,
    optimizer: torch.optim.Optimizer,
    configs: Sequence[RunConfig],
    sequences: Sequence[TaskSequence],
    t: int,
    group_reg: GroupRegulariser,
    records: list[RunRecord],
    alive: list[bool],
) -> None:
    """Train task ``t`` for every run at once; record each run's time, loss and divergence."""
    first = configs[0]
    device = next(stack.parameters()).device
    batches = [
        Batches(seq.tasks[t].train, first.batch_size, generator(c.seed, "order", t), device)
        for c, seq in zip(configs, sequences, strict=True)
    ]
    head = sequences[0].tasks[t].head
    set_train_mode(stack.base, t, first.bn)
    loss_fn = GroupLoss()
    running = torch.zeros(len(configs), device=device)
    blown = torch.zeros(len(configs), dtype=torch.bool, device=device)
    sync(device)
    start = time.perf_counter()
    for _ in range(first.epochs):
        running.zero_()
        orders = [b.epoch() for b in batches]
        for i in range(len(orders[0])):
            pairs = [b.get(order[i]) for b, order in zip(batches, orders, strict=True)]
            x = torch.stack([p[0] for p in pairs])
            y = torch.stack([p[1] for p in pairs])
            train_step(stack, optimizer, lambda m, v: m(v, head), x, y, group_reg, loss_fn)
            running += loss_fn.last
            if (i + 1) % CHECK_EVERY == 0:
                blown |= ~torch.isfinite(running)
        blown |= ~torch.isfinite(running)
    sync(device)
    seconds = (time.perf_counter() - start) / len(configs)
    means, blown_list = (running / len(orders[0])).tolist(), blown.tolist()
    bad = _non_finite_names(stack)
    for s, r in enumerate(records):
        if not alive[s]:
            continue
        where = f"task {t + 1} ({sequences[s].tasks[t].name})"
        r.train_seconds.append(seconds)
        r.train_loss.append(None if blown_list[s] else means[s])
        if blown_list[s]:
            message = f"the training loss became non-finite during {where}"
        elif bad[s] is not None:
            message = f"{bad[s]} became non-finite by the end of {where}"
        else:
            continue
        alive[s] = False
        _diverged(r, len(sequences[s].tasks), message)


def _non_finite_names(stack: Stack) -> list[str | None]:
    """Per run, the first parameter or floating-point buffer holding NaN/inf (else None)."""
    tensors = list(zip(stack.names, stack.stacked, strict=True))
    tensors += [(n, b) for n, b in stack.stacked_buffers().items() if b.is_floating_point()]
    out: list[str | None] = []
    for s in range(stack.size):
        out.append(next((n for n, v in tensors if not bool(torch.isfinite(v[s]).all())), None))
    return out
