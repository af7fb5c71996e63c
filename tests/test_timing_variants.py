"""The timing table's variant rows: labels, validation, a quick synthetic run, the report.

Variants are estimator names with options that change the structure (``costs.variants``),
labelled as the experiments' method labels without ``ewc ``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import estimators
from benchmark import cli, costs
from benchmark.costs import child, measure, timing, variants, workloads
from benchmark.methods import label_of, parse_label
from benchmark.report import timing as timing_report

REPORTS = Path(__file__).resolve().parents[1] / "reports"
EXPECTED = (
    "kfac-exact factors=a-diag",
    "kfac-exact factors=g-diag",
    "kfac-exact factors=diag",
    "kfac-exact factors=a-only",
    "kfac-exact layers=hidden",
    "kfac-exact layers=output",
    "full-exact output_curvature=mean",
)


# -- labels ------------------------------------------------------------------------------------


def test_variant_labels_are_the_method_labels_without_ewc():
    labels = tuple(variants.variant_label(name, options) for name, options in variants.VARIANTS)
    assert labels == EXPECTED
    for (name, options), label in zip(variants.VARIANTS, labels, strict=True):
        config = {"method": "ewc", "mode": "separate", "estimator": name}
        assert label_of({**config, "estimator_options": options}) == f"ewc {label}"
        assert parse_label(f"ewc {label}")["estimator_options"] == options
        assert variants.parse_variant(label) == (name, options)
    assert variants.variant_label("diag-exact", {}) == "diag-exact"
    assert variants.parse_variant("diag-exact") == ("diag-exact", {})


def test_default_rows_put_each_variant_right_after_its_estimator():
    labels = variants.default_labels()
    assert [lab for lab in labels if " " not in lab] == estimators.names()
    assert set(EXPECTED) <= set(labels) and len(labels) == len(estimators.names()) + len(EXPECTED)
    kfac = labels.index("kfac-exact")
    assert labels[kfac + 1 : kfac + 7] == EXPECTED[:6]
    full = labels.index("full-exact")
    assert labels[full + 1] == "full-exact output_curvature=mean"
    config = timing.make_config(device="cpu", synthetic=True)
    assert config.names == labels


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("kfac-exact factors=a-diag,diag-exact", ("kfac-exact factors=a-diag", "diag-exact")),
        (" kfac-exact   layers=hidden , identity,", ("kfac-exact layers=hidden", "identity")),
        ("kfac-exact layers=1,4,diag-exact", ("kfac-exact layers=1,4", "diag-exact")),
        ("kfac-exact layers=1,4 factors=diag", ("kfac-exact layers=1,4 factors=diag",)),
    ],
)
def test_split_names(text, labels):
    assert variants.split_names(text) == labels


def test_check_names_orders_canonicalises_and_deduplicates():
    given = [
        "kfac-exact layers=hidden factors=diag",
        "diag-exact",
        "kfac-exact factors=a-diag",
        "kfac-exact",
        "kfac-exact factors=diag layers=hidden",
    ]
    assert timing.check_names(given) == (  # VARIANTS' order first, then others as given
        "diag-exact",
        "kfac-exact",
        "kfac-exact factors=a-diag",
        "kfac-exact factors=diag layers=hidden",
    )


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("kfac-exakt factors=a-diag", "unknown estimator name(s) 'kfac-exakt factors=a-diag'"),
        ("kfac-exact factors=bogus", "must be one of full, a-diag, g-diag, diag, a-only"),
        ("kfac-exact foo=1", "'foo=1' not understood; a variant is an estimator name followed"),
        ("kfac-exact hidden", "options of rank (an integer), factors (a word), layers"),
        ("kfac-exact layers=9", "'9' is not a layer of tutorial-mlp; groups: 'all', 'hidden'"),
        ("diag-exact factors=a-diag", "unknown option(s) 'factors' for estimator 'diag-exact'"),
        ("full-mc output_curvature=mean", "defined for full-exact only"),
        ("full-exact output_curvature=max", "must be one of per-input, mean"),
    ],
)
def test_bad_variants_say_what_is_allowed(label, message):
    with pytest.raises(measure.SetupError) as info:
        timing.check_names([label])
    assert message in str(info.value)
    with pytest.raises(measure.SetupError):
        timing.make_config(names=[label], device="cpu", synthetic=True)


def test_no_names_is_an_error():
    with pytest.raises(measure.SetupError, match="no estimator names given; valid names"):
        variants.split_names(" , ")


def test_cli_names_take_variant_labels(tmp_path, monkeypatch, capsys):
    seen = {}

    def stop(config):
        seen["names"] = config.names
        raise measure.SetupError("stop here")

    monkeypatch.setattr(costs, "run_timing", stop)
    argv = ["timing", "--synthetic", "--no-memory", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main([*argv, "--names", "kfac-exact factors=a-diag,diag-exact"]) == 2
    assert seen["names"] == ("diag-exact", "kfac-exact factors=a-diag")
    assert capsys.readouterr().err == "error: stop here\n"


def test_cli_bad_variant_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["timing", "--names", "kfac-exact factors=bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --names: bad variant 'kfac-exact factors=bogus'" in err
    assert "a-only" in err and "Traceback" not in err


# -- the measurement ---------------------------------------------------------------------------


def test_child_fits_the_variant():
    spec = child.ChildSpec(
        kind="estimator", name="kfac-exact", n=8, n_loaded=8, options={"factors": "diag"}
    )
    assert child.ChildSpec(**json.loads(json.dumps(asdict(spec)))) == spec
    model = workloads.synthetic_tutorial_network("cpu")
    x, y = workloads.synthetic(8)
    assert child.child_workload(spec, model, x, y)().structure == "kfac-diag"


@pytest.fixture
def restore_threads():
    """The run calls torch.set_num_threads; give later tests torch's setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


NAMES = (
    "diag-exact",
    "full-exact output_curvature=mean",
    "kfac-exact layers=output",
    "kfac-exact factors=a-diag",
    "kfac-exact",
    "full-exact",
)


@pytest.fixture
def quick_record(monkeypatch, restore_threads):
    """A quick synthetic run of a few rows; full-exact under a tiny budget; fake memory children."""
    specs = []

    def fake_child(spec, timeout_s=0.0):
        specs.append(spec)
        return {"extra_bytes": 1024**2, "rss_before": 0, "hwm": 1024**2}

    monkeypatch.setattr(child, "measure_in_child", fake_child)
    monkeypatch.setattr(timing, "memory_method", lambda memory, device: {"method": "proc"})
    monkeypatch.setitem(workloads.TIMED_OPTIONS, "full-exact", {"memory_budget": 10**6})
    config = timing.make_config(
        sizes=[16],
        names=NAMES,
        device="cpu",
        threads=1,
        penalty_steps=2,
        quick=True,
        synthetic=True,
        compare=False,
    )
    return timing.run_timing(config), specs


def test_quick_run_times_variant_rows(quick_record):
    record, specs = quick_record
    (size,) = record["sizes"]
    rows = {r["name"]: r for r in size["estimators"]}
    assert list(rows) == [
        "diag-exact",
        "full-exact",
        "full-exact output_curvature=mean",
        "kfac-exact",
        "kfac-exact factors=a-diag",
        "kfac-exact layers=output",
    ]
    assert rows["kfac-exact factors=a-diag"]["options"] == {"factors": "a-diag"}
    assert rows["kfac-exact layers=output"]["options"] == {"layers": ["output"]}
    assert rows["kfac-exact"]["options"] == {} and rows["kfac-exact"]["estimator"] == "kfac-exact"
    for label in ("kfac-exact", "kfac-exact factors=a-diag", "kfac-exact layers=output"):
        row = rows[label]
        assert row["status"] == "ok" and row["median_s"] > 0, row
        assert row["x_floor"] == pytest.approx(row["median_s"] / size["floor"]["median_s"])
        assert row["memory"]["extra_bytes"] == 1024**2
    assert rows["kfac-exact layers=output"]["nbytes"] < rows["kfac-exact"]["nbytes"]
    for label in ("full-exact", "full-exact output_curvature=mean"):
        assert rows[label]["status"] == "refused" and rows[label]["budget_bytes"] == 10**6
    measured = {(s.name, json.dumps(s.options)) for s in specs if s.kind == "estimator"}
    assert measured == {
        ("diag-exact", "{}"),
        ("kfac-exact", "{}"),
        ("kfac-exact", '{"factors": "a-diag"}'),
        ("kfac-exact", '{"layers": ["output"]}'),
    }
    assert record["schema"] == timing.SCHEMA


def test_quick_run_renders_variants_after_their_estimator(quick_record):
    record, _ = quick_record
    text = timing_report.render_markdown(json.loads(json.dumps(record)))
    lines = text.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(f"| {label} |"))
        for label in ("full-exact", "full-exact output_curvature=mean", "kfac-exact")
    ]
    assert order == sorted(order) and order[1] == order[0] + 1
    assert "| full-exact output_curvature=mean | refused: needs " in text
    note = next(line for line in lines if line.startswith("- Variants:"))
    assert "`factors=a-diag`: G (x) diag A" in note
    assert "`layers=output`: a Kronecker block on the output layer only" in note
    assert "`output_curvature=mean`: the exact Jacobians" in note
    assert "g-diag" not in note


# -- old records -------------------------------------------------------------------------------


def test_committed_timing_json_still_renders_as_committed():
    """reports/timing.json renders to reports/timing.md; the variants' note where it has them."""
    raw = (REPORTS / "timing.json").read_text()
    text = timing_report.render_markdown(json.loads(raw))
    assert text == (REPORTS / "timing.md").read_text()
    assert ("- Variants:" in text) == ("factors=a-diag" in raw)


def test_variant_notes_of_rows_without_options():
    old = [{"name": "kfac-exact", "status": "ok"}]
    assert timing_report.variant_notes(old) == []
    new = [*old, {"name": "kfac-exact layers=1,4", "options": {"layers": ["1", "4"]}}]
    (note,) = timing_report.variant_notes(new)
    assert "`layers=1,4`: see README" in note
