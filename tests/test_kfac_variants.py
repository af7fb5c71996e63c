"""KFAC ablation variants and the averaged-output-curvature control (issue 13), in float64.

Each variant is checked against a dense matrix built the slow obvious way (``tests.reference``):
KFAC factors from per-input outer products in Python loops, then the variant's change to them
(diagonals, identity G), ``torch.kron`` blocks on the chosen layers and the exact diagonal
elsewhere; the control from per-input logit Jacobians (one autograd call per class) and an
explicit mean of diag(p) - p p^T. Then the penalty's gradient, grouped runs, online rules,
errors, and method labels.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import estimators
from benchmark.config import RunConfig
from benchmark.grouped import run_group
from benchmark.harness import run
from benchmark.methods import label_of, parse_label, sort_key
from benchmark.methods.base import label_value
from benchmark.sweep import parse_experiment
from estimators import (
    DenseCurvature,
    FisherMemoryError,
    KFACCurvature,
    KFACDiagCurvature,
    LowRankCurvature,
)
from estimators.labels import MonteCarlo
from estimators.stacking import stacked_matmul
from tests import reference as ref
from tests.cases import CASES
from tests.structures import tiny

TOL = 1e-10
FACTORS = ["full", "a-diag", "g-diag", "diag", "a-only"]
LAYERS = [("all",), ("hidden",), ("output",)]
BRUTE = CASES[:2]  # mlp_bn (Linear + BatchNorm), cnn (Conv2d with and without bias + Linear)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def replayed_labels(model, forward, x, mc_samples, seed, chunk) -> torch.Tensor:
    """The labels a ``kfac-mc`` fit draws: same generator, same chunks."""
    sampler = MonteCarlo(mc_samples, torch.Generator().manual_seed(seed))
    parts = [
        sampler.sample(ref.probabilities(model, forward, x[s : s + chunk]))
        for s in range(0, len(x), chunk)
    ]
    return torch.cat(parts, dim=1)


def fit_kfac(case, factors, layers, mode="exact", chunk=3, seed=5):
    """The fitted variant and its brute-force dense matrix."""
    model, x, y = case.make()
    fwd = case.forward or ref.default_forward
    opts = {"factors": factors, "layers": layers, "chunk_size": chunk}
    opts |= {"forward": case.forward} if case.forward else {}
    kw = {"targets": y, "forward": fwd}
    ref_mode = mode
    if mode == "mc":
        opts |= {"mc_samples": 2, "generator": torch.Generator().manual_seed(seed)}
        kw = {"labels": replayed_labels(model, fwd, x, 2, seed, chunk), "forward": fwd}
        ref_mode = "labels"
    curv = estimators.make(f"kfac-{mode}", **opts).fit(model, x, y)
    return curv, ref.kfac_variant_dense(model, x, ref_mode, factors, layers, **kw)


def check_against(curv, expected) -> None:
    assert rel(curv.dense(), expected) <= TOL
    assert rel(curv.diagonal_flat(), expected.diagonal()) <= TOL
    v = torch.randn(curv.numel, 3, dtype=torch.float64)
    assert rel(curv.matmat(v), expected @ v) <= TOL
    d = v[:, 0]
    assert float(curv.quadratic_flat(d)) == pytest.approx(float(d @ expected @ d), rel=TOL)
    assert curv.frobenius_sq() == pytest.approx(float(expected.square().sum()), rel=1e-12)


# -- the variants against brute force -----------------------------------------------------------
@pytest.mark.parametrize("layers", LAYERS, ids=[w[0] for w in LAYERS])
@pytest.mark.parametrize("factors", FACTORS)
@pytest.mark.parametrize("case", BRUTE, ids=[c.name for c in BRUTE])
def test_variant_matches_brute_force(case, factors, layers):
    curv, expected = fit_kfac(case, factors, layers)
    assert isinstance(curv, KFACDiagCurvature if factors == "diag" else KFACCurvature)
    check_against(curv, expected)


@pytest.mark.parametrize(("mode", "factors"), [("empirical", "a-diag"), ("mc", "g-diag")])
def test_other_label_modes(mode, factors):
    curv, expected = fit_kfac(CASES[0], factors, ("hidden",), mode=mode)
    check_against(curv, expected)


@pytest.mark.parametrize(
    ("case", "layers", "blocks"),
    [
        (CASES[0], ["1", "7"], ["1", "7"]),  # mlp_bn: Linear layers 1, 4, 7
        (CASES[0], ["output", "1"], ["1", "7"]),  # a group and a name
        (CASES[2], ("output",), ["heads.1"]),  # the head the forward runs, not the spare one
        (CASES[2], ("hidden",), ["trunk.0"]),
        (CASES[4], ("hidden",), ["inp"]),  # the shared layer runs twice: never a block
    ],
    ids=["names", "group-and-name", "multi-head-output", "multi-head-hidden", "shared"],
)
def test_layers_by_name_and_group(case, layers, blocks):
    curv, expected = fit_kfac(case, "full", layers)
    check_against(curv, expected)
    names = [n for n, p in case.make()[0].named_parameters()]
    starts = {blk.weight.start for blk in curv.blocks}
    chosen = [n.rpartition(".")[0] for n in names if n.endswith("weight")]
    chosen = [c for c in chosen if curv.layout.slice(f"{c}.weight").start in starts]
    assert chosen == blocks
    assert curv.summary == "kfac blocks " + ",".join(blocks)


def test_defaults_are_kfac():
    model, x, y = CASES[1].make()
    plain = estimators.make("kfac-exact").fit(model, x, y)
    same = estimators.make("kfac-exact", factors="full", layers="all").fit(model, x, y)
    assert torch.equal(plain.dense(), same.dense())
    assert plain.summary == same.summary == "kfac"
    assert rel(plain.dense(), ref.kfac_dense(model, x, "exact")) <= TOL


def test_a_only_is_the_feature_penalty():
    """G = I: sum over layers of tr(D A D^T), D = [dW | db], with no output gradient at all."""
    model, x, y = tiny()
    curv = estimators.make("kfac-exact", factors="a-only").fit(model, x, y)
    d = torch.randn(curv.numel, dtype=torch.float64)
    delta = curv.layout.unflatten(d)
    total = 0.0
    for i, layer in ((0, model[0]), (2, model[2])):
        A, _ = ref.kfac_factors(model, layer, x, "exact")
        D = torch.cat([delta[f"{i}.weight"], delta[f"{i}.bias"].unsqueeze(1)], dim=1)
        total += float(torch.trace(D @ A @ D.T))
    assert float(curv.quadratic_flat(d)) == pytest.approx(total, rel=TOL)
    assert all(torch.equal(b.G, torch.eye(b.G.shape[0], dtype=b.G.dtype)) for b in curv.blocks)


def test_the_variants_differ():
    model, x, y = CASES[1].make()
    dense = {f: estimators.make("kfac-exact", factors=f).fit(model, x, y).dense() for f in FACTORS}
    for i, f in enumerate(FACTORS):
        for g in FACTORS[i + 1 :]:
            assert rel(dense[f], dense[g]) > 1e-3, (f, g)
    hidden, output = (
        estimators.make("kfac-exact", layers=w).fit(model, x, y).dense() for w in LAYERS[1:]
    )
    assert rel(hidden, output) > 1e-3 and rel(hidden, dense["full"]) > 1e-3


def test_diag_is_the_diagonal_of_kfac():
    model, x, y = CASES[1].make()
    kfac = estimators.make("kfac-exact").fit(model, x, y)
    diag = estimators.make("kfac-exact", factors="diag").fit(model, x, y)
    assert rel(diag.diagonal_flat(), kfac.diagonal_flat()) <= 1e-14
    assert diag.summary == "kfac-diag"


# -- the averaged-output-curvature control ------------------------------------------------------
@pytest.mark.parametrize("representation", ["dense", "factor"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_averaged_output_curvature_matches_brute_force(case, representation):
    model, x, y = case.make()
    fwd = case.forward or ref.default_forward
    opts = {"representation": representation, "chunk_size": 3}
    opts |= {"forward": case.forward} if case.forward else {}
    curv = estimators.make("full-exact", output_curvature="mean", **opts).fit(model, x, y)
    expected = ref.averaged_output_fisher(model, x, fwd)
    assert isinstance(curv, DenseCurvature if representation == "dense" else LowRankCurvature)
    check_against(curv, expected)
    if representation == "factor":
        assert curv.factor.shape == (len(x) * 3, curv.numel)  # C = 3 rows per input
    exact = ref.dense_fisher(model, x, "exact", forward=fwd)
    assert rel(expected, exact) > 1e-3  # the control differs from the Fisher it stands for


def test_averaged_output_curvature_of_one_input_is_the_fisher():
    model, x, y = CASES[0].make()
    curv = estimators.make("full-exact", output_curvature="mean").fit(model, x[:1], y[:1])
    assert rel(curv.dense(), ref.dense_fisher(model, x[:1], "exact")) <= TOL


def test_averaged_output_curvature_refuses_before_computing(monkeypatch):
    model, x, y = CASES[0].make()

    def never(*args, **kwargs):
        raise AssertionError("computed before refusing")

    monkeypatch.setattr(estimators.fullavg, "mean_output_curvature", never)
    with pytest.raises(FisherMemoryError, match="full Fisher"):
        estimators.make("full-exact", output_curvature="mean", memory_budget=100).fit(model, x, y)
    for name in ("full-mc", "full-empirical"):
        with pytest.raises(ValueError, match=f"'mean' is defined for full-exact only.*'{name}'"):
            estimators.make(name, output_curvature="mean")
    with pytest.raises(ValueError, match="'output_curvature' must be one of per-input, mean"):
        estimators.make("full-exact", output_curvature="average")


# -- penalty gradient, grouped runs, online ------------------------------------------------------
VARIANTS = [("kfac-exact", {"factors": f}) for f in FACTORS]
VARIANTS += [("kfac-exact", {"layers": "output", "factors": "a-diag"})]
VARIANTS += [
    ("full-exact", {"output_curvature": "mean", "representation": r}) for r in ("dense", "factor")
]
VARIANT_IDS = [f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS]


def _moved(model, scale):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn_like(p))
    return other


@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=VARIANT_IDS)
def test_penalty_gradient_is_autograd_of_the_quadratic(name, opts):
    torch.manual_seed(1)
    model, x, y = CASES[0].make()
    curv = estimators.make(name, **opts).fit(model, x, y)
    moved = _moved(model, 0.2)
    delta = {
        n: (p - dict(model.named_parameters())[n]).detach().requires_grad_()
        for n, p in moved.named_parameters()
    }
    grads = torch.autograd.grad(0.5 * 3.0 * curv.quadratic(delta), list(delta.values()))
    expected = torch.cat([g.reshape(-1) for g in grads])
    ewc = estimators.EWC(3.0, "separate")
    ewc.consolidate(model, curv)
    for p in moved.parameters():
        p.grad = None
    ewc.add_gradients(moved)
    closed = torch.cat([p.grad.reshape(-1) for p in moved.parameters()])
    assert rel(closed, expected) <= TOL
    penalty = 0.5 * 3.0 * curv.quadratic({n: d.detach() for n, d in delta.items()})
    assert float(ewc.loss(moved).detach()) == pytest.approx(float(penalty), rel=1e-12)


@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=VARIANT_IDS)
def test_stacked_product_is_each_runs_matvec(name, opts):
    torch.manual_seed(2)
    model, x, y = CASES[1].make()
    runs = [estimators.make(name, **opts).fit(_moved(model, 0.3 * s), x, y) for s in range(3)]
    rows = torch.randn(3, runs[0].numel, dtype=torch.float64)
    expected = torch.stack([c.matvec(r) for c, r in zip(runs, rows)])
    assert torch.allclose(stacked_matmul(runs)(rows), expected, rtol=1e-12, atol=1e-14)
    batched = type(runs[0])._stacked_matmul(runs) is not None
    assert batched is name.startswith("kfac")  # dense and factor: one matvec each, as full-*


@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=VARIANT_IDS)
def test_online_rule_agrees_with_the_curvature(name, opts):
    model, x, y = tiny()
    curv = estimators.make(name, **opts).fit(model, x, y)
    online = estimators.supports_online(name, **opts)
    assert online is (opts.get("factors") == "diag" or opts.get("representation") == "dense")
    if online:
        total = curv.add(curv, 0.5)
        assert rel(total.dense(), 1.5 * curv.dense()) <= 1e-14
    else:
        with pytest.raises(NotImplementedError, match="use separate mode"):
            curv.add(curv, 0.5)
        assert estimators.online_refusal(name, **opts)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"factors": "sparse"}, r"'factors' must be one of full, a-diag, g-diag, diag, a-only"),
        ({"factors": None}, "'factors' must be one of"),
        ({"layers": []}, "'layers' must be a layer name or a non-empty list"),
        ({"layers": ["1", "1"]}, "distinct"),
        ({"layers": [""]}, "'all', 'hidden', 'output'"),
        ({"layers": 3}, "'layers' must be"),
        ({"rank": 3}, "unknown option.*'rank'.*valid options: chunk_size, factors"),
    ],
)
def test_bad_options_say_what_is_allowed(opts, message):
    with pytest.raises(ValueError, match=message):
        estimators.make("kfac-exact", **opts)


def test_unknown_layers_name_the_model_layers():
    model, x, y = CASES[0].make()
    est = estimators.make("kfac-exact", layers=["1", "fc9"])
    with pytest.raises(ValueError, match=r"'fc9' is not a Kronecker layer.*'1', '4', '7'.*hidden"):
        est.fit(model, x, y)
    with pytest.raises(ValueError, match=r"no module 'fc9' with a weight.*'1', '3', '4', '6', '7'"):
        est.check_memory(model, 10, 3)  # before training: BatchNorm weights are modules too
    estimators.make("kfac-exact", layers=["1", "hidden"]).check_memory(model, 10, 3)
    with pytest.raises(ValueError, match=r"'3' is not a Kronecker layer"):  # BatchNorm1d
        estimators.make("kfac-exact", layers="3").fit(model, x, y)
    for name in ("ekfac-exact", "full-exact", "diag-exact"):
        with pytest.raises(ValueError, match="unknown option"):
            estimators.make(name, factors="diag")


def test_no_hidden_layer_means_no_block():
    model = nn.Linear(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    curv = estimators.make("kfac-exact", layers="hidden").fit(model, x)
    assert not curv.blocks and curv.summary == "kfac blocks none"
    assert rel(curv.dense(), torch.diag(ref.dense_fisher(model, x, "exact").diagonal())) <= TOL
    out = estimators.make("kfac-exact", layers="output").fit(model, x)
    assert rel(out.dense(), ref.kfac_dense(model, x, "exact")) <= TOL  # its one layer


# -- method labels ---------------------------------------------------------------------------------
LABELS = {
    "ewc kfac-exact factors=a-diag": {"factors": "a-diag"},
    "ewc kfac-exact factors=g-diag": {"factors": "g-diag"},
    "ewc kfac-exact factors=diag": {"factors": "diag"},
    "ewc kfac-exact factors=a-only": {"factors": "a-only"},
    "ewc kfac-exact layers=hidden": {"layers": ["hidden"]},
    "ewc kfac-exact layers=output": {"layers": ["output"]},
    "ewc kfac-mc factors=a-diag layers=1,4": {"factors": "a-diag", "layers": ["1", "4"]},
    "ewc-online kfac-exact factors=diag": {"factors": "diag"},
    "ewc full-exact output_curvature=mean": {"output_curvature": "mean"},
}


@pytest.mark.parametrize("label", sorted(LABELS))
def test_labels_parse_and_print_back(label):
    fields = parse_label(label, {"memory_budget": 10})
    assert fields["estimator_options"] == {"memory_budget": 10, **LABELS[label]}
    assert label_of(fields) == label
    estimators.make(fields["estimator"], **fields["estimator_options"])
    assert sort_key(label)[0] == sort_key("ewc kfac-exact")[0]
    assert "estimator_options" not in parse_label("ewc full-exact")


def test_experiment_accepts_the_variants():
    labels = list(LABELS)
    data = {
        "name": "kfac-ablation",
        "seeds": [0],
        "selection_seeds": [7],
        "defaults": {"data": "synthetic", "epochs": 1, "fisher_samples": 16, "model": "mlp"},
        "lambdas": {"default": [1.0]},
        "studies": [{"sequence": "split-mnist-class", "methods": labels}],
    }
    exp = parse_experiment(data)
    assert sorted(g.base.label for g in exp.groups) == sorted(labels)
    by_label = {g.base.label: g.base for g in exp.groups}
    assert by_label["ewc kfac-exact factors=a-only"].estimator_options == {"factors": "a-only"}
    control = by_label["ewc full-exact output_curvature=mean"]
    assert control.estimator_options == {"output_curvature": "mean"}
    bad = {**data, "studies": [{"sequence": "split-mnist-class", "methods": ["ewc kfac-exact"]}]}
    bad["studies"][0]["methods"] = ["ewc kfac-exact factors=sparse"]
    with pytest.raises(ValueError, match="one of full, a-diag, g-diag, diag, a-only"):
        parse_experiment(bad)
    bad["studies"][0]["methods"] = ["ewc-online kfac-exact factors=a-diag"]
    with pytest.raises(ValueError, match="online accumulation"):
        parse_experiment(bad)


@pytest.mark.parametrize(
    "label",
    [
        "ewc kfac-exact factors=",
        "ewc kfac-exact layers=1,,4",
        "ewc kfac-exact layers=",
        "l2 factors=diag",
    ],
)
def test_malformed_labels(label):
    with pytest.raises(ValueError, match=r"bad option|unknown method"):
        parse_label(label)


# -- end to end: training runs, alone and grouped ------------------------------------------------
RUNS = {
    "kfac-a-only-output": {"estimator": "kfac-exact", "factors": "a-only", "layers": ["output"]},
    "kfac-diag-online": {"estimator": "kfac-exact", "factors": "diag", "mode": "online"},
    "full-mean": {"estimator": "full-exact", "output_curvature": "mean", "fisher_samples": 16},
}


@pytest.mark.parametrize("case", list(RUNS))
def test_a_grouped_run_gives_its_record_alone(case):
    """Training with the penalty's closed-form gradient, alone and as one stacked group."""
    spec = dict(RUNS[case])
    options = {k: spec.pop(k) for k in ("factors", "layers", "output_curvature") if k in spec}
    base = {"data": "synthetic", "epochs": 1, "fisher_samples": 64, "eval_limit": 100}
    base |= {"train_limit": 300, "model": "mlp", "method": "ewc", "estimator_options": options}
    configs = [RunConfig(**{**base, **spec}, lam=lam, seed=0) for lam in (1.0, 100.0)]
    together = run_group(configs)
    for config, grouped in zip(configs, together, strict=True):
        alone = run(config, probe=False)
        assert grouped.status == alone.status == "ok"
        assert grouped.run_id == alone.run_id
        assert grouped.train_loss == pytest.approx(alone.train_loss, rel=1e-4)
        assert grouped.representations == alone.representations
    assert config.label.endswith(" ".join(f"{k}={label_value(v)}" for k, v in options.items()))
    assert (
        alone.representations[0]
        == {
            "kfac-a-only-output": "kfac a-only blocks 5",  # mlp: Linear layers 1, 3, 5
            "kfac-diag-online": "kfac-diag",
            "full-mean": "full-factor 160 rows",  # 16 inputs x 10 classes
        }[case]
    )
