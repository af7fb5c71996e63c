"""Online EWC with Kronecker-factored curvatures: the ``online_rule`` option (issue 12, item 5).

Three KFAC fits of a tiny float64 MLP (Linear(3, 4) - Tanh - Linear(4, 3)) at three points of
training, on 6, 9 and 4 inputs. Every rule's penalty gradient is the gradient of
``0.5 lam d^T F d`` with F built densely from its factors; ``sum`` is the exact decayed sum;
``n-weighted`` and ``balanced`` follow their formulas; ``nearest`` is the brute-force nearest
Kronecker product and never further from the exact sum than the others; every rule is exact
when the tasks' factors are equal. Then the errors, EKFAC, a run through the harness and the
study's rule errors.
"""

from __future__ import annotations

import math

import pytest
import torch

import estimators
from benchmark.config import RunConfig
from benchmark.harness import run
from benchmark.study.online_rules import layer_errors, rule_errors
from estimators import KFACCurvature, SumCurvature
from estimators.kfac_online import nearest_kronecker, with_rule
from estimators.options import ONLINE_RULES
from tests.structures import reblocked, tiny

RULES = list(ONLINE_RULES)
DECAYS = [1.0, 0.6, 0.0]
SIZES = (6, 9, 4)


@pytest.fixture(scope="module")
def tasks() -> tuple[torch.nn.Module, list[KFACCurvature], list[list[torch.Tensor]]]:
    """The model, one ``kfac-exact`` fit per task and the parameters each was fitted at."""
    model, _, _ = tiny()
    gen = torch.Generator().manual_seed(0)
    fits, points = [], []
    for n in SIZES:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.4 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        fits.append(estimators.make("kfac-exact").fit(model, x))
        points.append([p.detach().clone() for p in model.parameters()])
    return model, fits, points


def fold(fits, decay):
    total = fits[0]
    for fit in fits[1:]:
        total = total.add(fit, decay)
    return total


def weights(decay, n=3):
    return [decay ** (n - 1 - t) for t in range(n)]


def kron_dense(c: KFACCurvature) -> torch.Tensor:
    """F from its factors: kron(G, A) on each block's positions, the rest's diagonal."""
    out = torch.zeros(c.numel, c.numel, dtype=torch.float64)
    for blk in c.blocks:
        idx = blk.flat_index()
        out[idx.unsqueeze(1), idx.unsqueeze(0)] = torch.kron(blk.G, blk.A)
    out[c.rest_index, c.rest_index] = c.rest_diag
    return out


def rule_dense(c) -> torch.Tensor:
    if isinstance(c, SumCurvature):
        return sum(w * kron_dense(t) for t, w in zip(c.terms, c.weights))
    return kron_dense(c)


def exact_dense(fits, decay):
    return sum(w * kron_dense(f) for w, f in zip(weights(decay, len(fits)), fits))


def rel(a, b):
    return float((a - b).norm() / b.norm())


def block_only(fits, c: torch.Tensor) -> torch.Tensor:
    """Entries of the Kronecker blocks only."""
    mask = torch.zeros_like(c, dtype=torch.bool)
    for blk in fits[0].blocks:
        idx = blk.flat_index()
        mask[idx.unsqueeze(1), idx.unsqueeze(0)] = True
    return c * mask


# -- every rule: the penalty gradient is that of 0.5 lam d^T F d -----------------------------------
@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("rule", RULES)
def test_penalty_gradient_is_that_of_the_dense_quadratic(tasks, rule, decay):
    model, fits, points = tasks
    ewc, lam = estimators.EWC(3.0, mode="online", gamma=decay), 3.0
    for fit, point in zip(fits, points):
        with torch.no_grad():
            for p, v in zip(model.parameters(), point):
                p.copy_(v)
        ewc.consolidate(model, with_rule(fit, rule))
    assert len(ewc) == 1
    dense = rule_dense(ewc.terms[0][1])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
            p.grad = None
    ewc.add_gradients(model)
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    d = torch.cat([(p - v).reshape(-1) for p, v in zip(model.parameters(), points[-1])]).detach()
    d.requires_grad_(True)
    quad = 0.5 * lam * d @ dense @ d
    (want,) = torch.autograd.grad(quad, d)
    assert rel(got, want) <= 1e-12
    assert float(ewc.loss(model).detach()) == pytest.approx(float(quad.detach()), rel=1e-12)
    assert rel(ewc.terms[0][1].dense(), dense) <= 1e-13  # the curvature's own dense agrees


# -- each rule's formula ---------------------------------------------------------------------------
@pytest.mark.parametrize("decay", DECAYS)
def test_sum_is_the_exact_decayed_sum(tasks, decay):
    _, fits, _ = tasks
    total = fold([with_rule(f, "sum") for f in fits], decay)
    exact = sum(w * f.dense() for w, f in zip(weights(decay), fits))
    assert isinstance(total, SumCurvature)
    assert rel(total.dense(), exact) <= 1e-14
    assert len(total.terms) == (1 if decay == 0 else 3)  # a zero decay forgets the old terms
    assert total.frobenius_sq() == pytest.approx(float(exact.square().sum()), rel=1e-12)
    assert total.trace() == pytest.approx(float(exact.trace()), rel=1e-12)


@pytest.mark.parametrize("decay", DECAYS)
def test_n_weighted_averages_factors_by_discounted_counts(tasks, decay):
    _, fits, _ = tasks
    total = fold([with_rule(f, "n-weighted") for f in fits], decay)
    d = weights(decay)
    c = [w * n for w, n in zip(d, SIZES)]
    for b, blk in enumerate(total.blocks):
        a_bar = sum(ci * f.blocks[b].A for ci, f in zip(c, fits)) / sum(c)
        g_bar = sum(ci * f.blocks[b].G for ci, f in zip(c, fits)) / sum(c)
        assert rel(blk.A, a_bar) <= 1e-13
        assert rel(blk.G, sum(d) * g_bar) <= 1e-13
    rest = sum(w * f.rest_diag for w, f in zip(d, fits))
    assert torch.allclose(total.rest_diag, rest, rtol=1e-14, atol=0)


def ncl_by_hand(old, new, decay):
    """van de Ven's additive_nearest_kf with the old A decayed, rescaled to the exact trace."""
    (a_o, g_o), (a_n, g_n) = old, new
    a_o = decay * a_o
    pi = math.sqrt(float(g_o.trace() * a_n.trace() / (g_n.trace() * a_o.trace())))
    a, g = a_o + a_n / pi, g_o + g_n * pi
    exact = a_o.trace() * g_o.trace() + a_n.trace() * g_n.trace()
    c = float(exact / (a.trace() * g.trace()))
    return math.sqrt(c) * a, math.sqrt(c) * g


def test_balanced_is_ncls_sum_rescaled_to_the_exact_trace(tasks):
    _, fits, _ = tasks
    total = fold([with_rule(f, "balanced") for f in fits], 0.6)
    for b, blk in enumerate(total.blocks):
        pair = (fits[0].blocks[b].A, fits[0].blocks[b].G)
        for f in fits[1:]:
            pair = ncl_by_hand(pair, (f.blocks[b].A, f.blocks[b].G), 0.6)
        assert rel(blk.A, pair[0]) <= 1e-13 and rel(blk.G, pair[1]) <= 1e-13
    exact = exact_dense(fits, 0.6)
    assert float(total.trace()) == pytest.approx(float(exact.trace()), rel=1e-12)


def test_balanced_keeps_the_other_term_when_one_is_zero(tasks):
    _, fits, _ = tasks
    fit = with_rule(fits[0], "balanced")
    zero = with_rule(fits[1], "balanced")
    zero.blocks = [type(b)(b.weight, b.bias, b.A, torch.zeros_like(b.G)) for b in zero.blocks]
    assert rel(kron_dense(fit.add(zero, 0.5)), block_only(fits, 0.5 * kron_dense(fit))) <= 1e-14
    assert rel(kron_dense(zero.add(fit, 0.5)), block_only(fits, kron_dense(fit))) <= 1e-14


@pytest.mark.parametrize("decay", DECAYS)
def test_nearest_is_the_brute_force_nearest_kronecker_product(tasks, decay):
    _, fits, _ = tasks
    total = fold([with_rule(f, "nearest") for f in fits], decay)
    for b, blk in enumerate(total.blocks):
        exact = sum(
            w * torch.kron(f.blocks[b].G, f.blocks[b].A) for w, f in zip(weights(decay), fits)
        )
        g, a = blk.G.shape[0], blk.A.shape[0]
        rearranged = exact.reshape(g, a, g, a).permute(0, 2, 1, 3).reshape(g * g, a * a)
        u, s, vt = torch.linalg.svd(rearranged)
        brute = s[0] * torch.kron(u[:, 0].reshape(g, g), vt[0].reshape(a, a))
        assert rel(torch.kron(blk.G, blk.A), brute) <= 1e-12
        assert torch.linalg.eigvalsh(blk.A).min() >= -1e-12 * blk.A.trace()  # PSD factors
        assert torch.linalg.eigvalsh(blk.G).min() >= -1e-12 * blk.G.trace()


def test_nearest_of_zero_terms_is_zero():
    a, g = nearest_kronecker(torch.zeros(2, 3, 3, dtype=torch.float64), torch.ones(2, 2, 2))
    assert not a.any() and not g.any()


@pytest.mark.parametrize("decay", [1.0, 0.6])
def test_nearest_is_never_further_from_the_exact_sum(tasks, decay):
    _, fits, _ = tasks
    exact = exact_dense(fits, decay)
    err = {
        r: float((rule_dense(fold([with_rule(f, r) for f in fits], decay)) - exact).norm())
        for r in RULES
    }
    assert err["sum"] <= 1e-14 * float(exact.norm())
    assert err["nearest"] <= err["n-weighted"] and err["nearest"] <= err["balanced"]
    assert err["nearest"] > 1e-3 * float(exact.norm())  # the tasks differ: not trivially exact


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("rule", RULES)
def test_every_rule_is_exact_when_the_factors_are_equal(tasks, rule, decay):
    _, fits, _ = tasks
    same = [with_rule(fits[0], rule) for _ in range(3)]
    for fit, n in zip(same, SIZES):
        fit.n_inputs = n  # equal factors from different sample counts
    total = fold(same, decay)
    assert rel(total.dense(), sum(weights(decay)) * fits[0].dense()) <= 1e-13


# -- fitting, the registry, memory -----------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_a_fit_carries_its_rule(rule):
    model, x, _ = tiny()
    fit = estimators.make("kfac-exact", online_rule=rule).fit(model, x)
    assert fit.online_rule == rule and fit.n_inputs == x.shape[0]
    assert fit.summary == f"kfac online {rule}" and fit.online_refusal is None
    assert estimators.supports_online("kfac-exact", online_rule=rule)
    assert estimators.supports_online("kfac-mc", online_rule=rule, factors="a-diag")
    assert rel(fit.add(fit, 1.0).dense(), 2 * fit.dense()) <= 1e-13


def test_without_a_rule_kfac_and_ekfac_refuse_and_say_how():
    for name in ("kfac-exact", "ekfac-exact"):
        assert not estimators.supports_online(name)
        assert "online_rule" in estimators.online_refusal(name)
    assert estimators.supports_online("ekfac-exact", online_rule="sum")


def test_memory_of_the_rules(tasks):
    _, fits, _ = tasks
    one = fits[0].nbytes
    assert fold([with_rule(f, "sum") for f in fits], 1.0).nbytes == 3 * one
    assert fold([with_rule(f, "balanced") for f in fits], 1.0).nbytes == one
    assert fold([with_rule(f, "n-weighted") for f in fits], 1.0).nbytes == one
    factors = sum(8 * (b.A.numel() + b.G.numel()) for b in fits[0].blocks)
    assert fold([with_rule(f, "nearest") for f in fits], 1.0).nbytes == one + 3 * factors


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "opts", "message"),
    [
        ("kfac-exact", {"online_rule": "mean"}, "'online_rule' must be one of sum, n-weighted, "
         "balanced, nearest"),
        ("kfac-exact", {"online_rule": 1}, "must be one of"),
        ("kfac-exact", {"online_rule": "sum", "factors": "diag"}, "factors='diag' makes a "
         "diagonal curvature, which adds online exactly"),
        ("ekfac-exact", {"online_rule": "nearest"}, "'nearest' is not defined for ekfac: its "
         "diagonal s lives in each task's own eigenbasis.*takes online_rule 'sum'"),
        ("ekfac-mc", {"online_rule": "balanced"}, "not defined for ekfac"),
        ("diag-exact", {"online_rule": "sum"}, "unknown option.*'online_rule'.*valid options"),
        ("full-exact", {"online_rule": "sum"}, "unknown option.*'online_rule'"),
    ],
)  # fmt: skip
def test_bad_rules_say_what_is_allowed(name, opts, message):
    with pytest.raises(ValueError, match=message):
        estimators.make(name, **opts)
    with pytest.raises(ValueError, match=message):
        estimators.supports_online(name, **opts)


def test_a_rule_in_separate_mode_is_refused(tasks):
    model, fits, _ = tasks
    with pytest.raises(ValueError, match=r"online_rule='sum'.*separate mode keeps one term"):
        estimators.EWC(1.0).consolidate(model, with_rule(fits[0], "sum"))
    with pytest.raises(ValueError, match="online_rule only with mode = 'online'"):
        RunConfig(estimator="kfac-exact", estimator_options={"online_rule": "nearest"})
    with pytest.raises(ValueError, match=r"online accumulation .* kfac-exact.*pass online_rule"):
        RunConfig(estimator="kfac-exact", mode="online")
    config = RunConfig(
        estimator="kfac-exact", mode="online", estimator_options={"online_rule": "sum"}
    )
    assert config.label == "ewc-online kfac-exact online_rule=sum"


def test_mismatched_fits_are_refused(tasks):
    _, fits, _ = tasks
    with pytest.raises(ValueError, match=r"running curvature of rule 'sum'.*rule 'nearest'"):
        with_rule(fits[0], "sum").add(with_rule(fits[1], "nearest"))
    with pytest.raises(ValueError, match="online sum of kfac terms"):
        fold([with_rule(f, "sum") for f in fits[:2]], 1.0).add(with_rule(fits[2], "balanced"))
    with pytest.raises(ValueError, match="different blocks"):
        with_rule(fits[0], "balanced").add(with_rule(reblocked(fits[1]), "balanced"))
    hand = with_rule(fits[1], "n-weighted")
    hand.n_inputs = None
    with pytest.raises(ValueError, match=r"sample counts.*n_inputs"):
        with_rule(fits[0], "n-weighted").add(hand)
    with pytest.raises(NotImplementedError, match="use separate mode"):
        fits[0].add(fits[1])  # no rule: refused as before
    with pytest.raises(ValueError, match="unknown online_rule 'mean'; valid: sum, n-weighted"):
        with_rule(fits[0], "mean")


# -- EKFAC: per-task terms -------------------------------------------------------------------------
@pytest.mark.parametrize("decay", [1.0, 0.6])
def test_ekfac_sum_is_the_exact_sum_with_its_gradient(tasks, decay):
    model, _, points = tasks
    gen = torch.Generator().manual_seed(2)
    ekfac = []
    for point in points:
        with torch.no_grad():
            for p, v in zip(model.parameters(), point):
                p.copy_(v)
        x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        ekfac.append(estimators.make("ekfac-exact", online_rule="sum").fit(model, x))
    ewc = estimators.EWC(2.0, mode="online", gamma=decay)
    for fit in ekfac:
        ewc.consolidate(model, fit)
    total = ewc.terms[0][1]
    exact = sum(w * f.dense() for w, f in zip(weights(decay), ekfac))
    assert isinstance(total, SumCurvature) and total.structure == "ekfac-sum"
    assert rel(total.dense(), exact) <= 1e-13
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
            p.grad = None
    ewc.add_gradients(model)
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    d = torch.cat([(p - v).reshape(-1) for p, v in zip(model.parameters(), points[-1])]).detach()
    assert rel(got, 2.0 * exact @ d) <= 1e-12


# -- through the harness ---------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_online_kfac_runs_through_the_harness(rule):
    config = RunConfig(
        data="synthetic",
        sequence="split-mnist",
        n_tasks=3,
        model="mlp",
        model_options={"hidden": 16},
        method="ewc",
        mode="online",
        gamma=0.9,
        estimator="kfac-exact",
        estimator_options={"online_rule": rule},
        lam=10.0,
        epochs=1,
        fisher_samples=32,
        train_limit=200,
        eval_limit=50,
    )
    record = run(config, probe=False)
    assert record.status == "ok"
    assert len(record.acc_test) == 3 and all(len(row) == 3 for row in record.acc_test)
    assert all(math.isfinite(v) and 0 <= v <= 1 for row in record.acc_test for v in row)
    assert record.representations[0] == f"kfac online {rule}"


# -- the study's rule errors -----------------------------------------------------------------------
@pytest.mark.parametrize("decay", [1.0, 0.6])
def test_rule_errors_match_the_dense_errors(tasks, decay):
    _, fits, _ = tasks
    errors = rule_errors(fits, decay)
    exact = block_only(fits, exact_dense(fits, decay))
    for rule in RULES:
        combined = block_only(fits, rule_dense(fold([with_rule(f, rule) for f in fits], decay)))
        assert errors[rule] == pytest.approx(rel(combined, exact), abs=1e-7)
    assert errors["sum"] <= 1e-7
    assert errors["nearest"] <= min(errors["n-weighted"], errors["balanced"])
    per_layer = layer_errors(fits, decay)
    assert set(per_layer) == set(RULES) and all(set(v) == {"0", "2"} for v in per_layer.values())


def test_rule_errors_vanish_for_equal_factors_and_check_their_input(tasks):
    _, fits, _ = tasks
    errors = rule_errors([fits[0]] * 3, 0.5)
    assert all(e <= 1e-7 for e in errors.values())
    with pytest.raises(ValueError, match=r"unknown online rule.*valid: sum, n-weighted"):
        rule_errors(fits, rules=["mean"])
    with pytest.raises(ValueError, match="one kfac-\\* fit"):
        rule_errors([])
