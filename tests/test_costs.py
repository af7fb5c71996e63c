"""The cost measurements' shared parts: the timed training step and the interleaved rounds."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

import estimators
from benchmark.costs import measure, workloads
from benchmark.models import mlp
from benchmark.training import make_optimizer


def _tiny():
    model = workloads.seeded(lambda: mlp(hidden=8, depth=1), "cpu")
    x, y = workloads.synthetic(16)
    return model, x, y


def test_variant_steps_as_the_harness_does():
    """Variant.step == cross-entropy backward, EWC.add_gradients, the harness's Adam step."""
    model, x, y = _tiny()
    curvature = estimators.make("diag-exact").fit(model, x, y)
    variant = workloads.make_variant(model, curvature, "diag-exact", "separate", 2)
    assert variant.name == "diag-exact separate T=2"
    assert variant.penalty_bytes == 2 * curvature.nbytes
    twin = copy.deepcopy(model).train()
    ewc = estimators.EWC(workloads.PENALTY_LAMBDA)
    ewc.consolidate(twin, curvature)
    ewc.consolidate(twin, curvature)
    optimizer = make_optimizer("adam", workloads.PENALTY_LR, twin)
    for _ in range(3):
        variant.step(x, y)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(twin(x), y).backward()
        ewc.add_gradients(twin)
        optimizer.step()
    for p, q in zip(variant.model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_plain_and_online_variants():
    model, x, y = _tiny()
    plain = workloads.make_variant(model)
    assert (plain.name, plain.penalty, plain.regulariser, plain.penalty_bytes) == (
        "plain",
        None,
        None,
        0,
    )
    curvature = estimators.make("diag-exact").fit(model, x, y)
    online = workloads.make_variant(model, curvature, "diag-exact", "online", 3)
    assert len(online.penalty.terms) == 1
    assert online.regulariser.active


class _Recorder:
    def __init__(self, name, log):
        self.name, self.log, self.times = name, log, []

    def step(self, x, y):
        self.log.append((self.name, int(x)))


def test_interleaved_steps_order_and_warmup():
    log: list[tuple[str, int]] = []
    variants = [_Recorder(n, log) for n in "abc"]
    batches = [(torch.tensor(0), None), (torch.tensor(1), None)]
    measure.interleaved_steps(variants, batches, steps=3, warmup=2, sync=lambda: None)
    expected = [(v.name, r % 2) for r in range(5) for v in measure.shuffled(variants, r)]
    assert log == expected
    assert all(len(v.times) == 3 for v in variants)


def test_low_rank_rows_are_timed_at_the_protocols_rank_and_only_up_to_their_limit():
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 50), torch.nn.ReLU(), torch.nn.Linear(50, 10)
    )
    x, y = torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,))
    call = workloads.estimator_call("lowrank-exact", model, x, y)
    call.warm_up(1, lambda: None)
    assert call.row["status"] == "ok"
    big = torch.zeros(workloads.MAX_TIMED_N["lowrank-exact"] + 1, 1, 28, 28)
    skipped = workloads.estimator_call("lowrank-exact", model, big, torch.zeros(len(big)).long())
    skipped.warm_up(1, lambda: None)
    assert skipped.row["status"] == "not timed" and "N = 1,000" in skipped.row["message"]
    assert measure.failure(measure.NotTimed("x")) == {"status": "not timed", "message": "x"}
