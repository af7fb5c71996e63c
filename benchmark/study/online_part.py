r"""Part F of the study: how far each online KFAC rule is from the exact sum, on real tasks.

Online EWC keeps one running curvature; with KFAC the exact running sum
:math:`S_T = \sum_{t \le T} \gamma^{T-t} G_t \otimes A_t` (per layer) is not a Kronecker
product, and each ``online_rule`` (``estimators.kfac_online``) keeps something else. Here the
main comparison's network (the default experiment's MLP, with its settings) trains through the
harness with no penalty on ``permuted-mnist`` (``TASKS`` tasks, seed 0, its own permutations);
after each task t, ``kfac-exact`` is fitted at that task's weights on the sweep's ``N`` inputs of
task t (``methods.ewc.fit_inputs``: the inputs an EWC run of the same seed would use). For every
T from 2 on, ``online_rules.rule_errors`` gives each rule's relative Frobenius error
:math:`\|S_T - F_{rule}\|_F / \|S_T\|_F` over all Kronecker blocks, at decay 1 (online EWC's
default :math:`\gamma`) and at ``DECAY``; ``sum`` keeps every term, so its error is rounding.

The fits come from weights trained without a penalty, not from an online-EWC run: the rules'
errors depend on how different the tasks' factors are, which a penalty would shrink (the
measurement is then an upper end for runs that regularise).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import estimators
from estimators import KFACCurvature
from estimators.options import ONLINE_RULES

from ..config import RunConfig
from ..harness import run, sequence_of
from ..methods.ewc import fit_inputs
from ..models import make_model, task_forward
from .online_rules import rule_errors

SEQUENCE = "permuted-mnist"
TASKS = 5
"""Tasks of part F's sequence (the default experiment's permuted-mnist length)."""
DECAY = 0.9
"""The second online decay measured, besides 1."""


def online_config(train: RunConfig, n_tasks: int = TASKS) -> RunConfig:
    """Part E's training config moved to ``permuted-mnist`` with ``n_tasks`` tasks, no penalty."""
    return train.replace(sequence=SEQUENCE, n_tasks=n_tasks, method="baseline", lam=0.0)


def task_fits(config: RunConfig, root: str | None) -> tuple[list[KFACCurvature], float]:
    """``kfac-exact`` of each task at the weights right after it; and the training seconds."""
    states: dict[int, dict[str, torch.Tensor]] = {}

    def keep(t: int, model: nn.Module) -> None:
        states[t] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    start = time.perf_counter()
    run(config, root=root, on_task_end=keep, probe=False)
    seconds = time.perf_counter() - start
    seq = sequence_of(config, root, download=False)
    model = make_model(config.model, seq.n_outputs, seq.n_heads, config.model_options)
    fits = []
    for t, task in enumerate(seq.tasks):
        model.load_state_dict(states[t])
        model.eval()
        x, y = fit_inputs(config, task, t, torch.device("cpu"))
        curv = estimators.make("kfac-exact", forward=task_forward(model, task.head))
        fitted = curv.fit(model, x, y)
        assert isinstance(fitted, KFACCurvature)
        fits.append(fitted)
    return fits, seconds


def online_rules_part(
    train: RunConfig, root: str | None, bar: Callable[[str], None], n_tasks: int = TASKS
) -> dict[str, Any]:
    """Part F: rows (part ``F``: tasks T, decay, rule, ``rel_frobenius``) and its facts."""
    config = online_config(train, n_tasks)
    fits, seconds = task_fits(config, root)
    bar(f"part F: {n_tasks} tasks of {SEQUENCE} trained, KFAC fitted")
    rows = [
        {
            "part": "F",
            "model": config.model,
            "estimator": "kfac-exact",
            "rule": rule,
            "tasks": t,
            "decay": decay,
            "rel_frobenius": error,
            "n": config.fisher_samples,
        }
        for decay in (1.0, DECAY)
        for t in range(2, n_tasks + 1)
        for rule, error in rule_errors(fits[:t], decay).items()
    ]
    facts = {
        "sequence": SEQUENCE,
        "tasks": n_tasks,
        "n": config.fisher_samples,
        "seed": config.seed,
        "epochs": config.epochs,
        "rules": list(ONLINE_RULES),
        "decays": [1.0, DECAY],
        "train_seconds": seconds,
    }
    return {"rows": rows, "facts": facts}
