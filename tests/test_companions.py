"""The true full Fisher's answer at the end of REPORT.md's verdict (``report.companions``):
synthetic companion experiments with known effects, the lines checked against the companion's
own comparisons, and ``build_report``/``benchmark report --companion`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark import outcomes
from benchmark.records import write_record
from benchmark.report import build_report
from benchmark.report.companions import Companion, companion_section, main_rows
from benchmark.report.full_fisher import full_comparisons
from benchmark.report.verdict import interval

from .synthetic_runs import effect_records

EFFECTS = {"full-exact": 0.0, "kfac-exact": 0.0, "diag-exact": -0.05, "ekfac-exact": +0.04}
"""Against the full Fisher: KFAC none, the diagonal worse (forgets more), EKFAC better."""


def _runs(effects=EFFECTS, **settings) -> list[outcomes.Run]:
    return outcomes.summarise(effect_records(effects, **settings), [99])


def _line(text: str, start: str) -> str:
    return next(s for s in text.splitlines() if s.startswith(start))


def test_each_structure_is_answered_from_the_full_fishers_side():
    companion = _runs()
    text = companion_section(_runs(), [Companion("full-fisher", companion)])
    assert text.startswith("### The true full Fisher against the diagonal, KFAC and EKFAC")
    line = _line(text, "- mnist-fmnist (bn = freeze) (`make full-fisher`, 10 paired test seeds")
    comps = {c.label: c for c in full_comparisons(companion)}
    diag, ekfac = (comps[f"ewc {n}"] for n in ("diag-exact", "ekfac-exact"))
    assert diag.forgetting_outcome == "worse" and ekfac.forgetting_outcome == "better"
    assert (
        "the full Fisher (a run: 1.7 min, mean over its 10 test runs) forgets less than the "
        "diagonal and reaches higher average accuracy "
        f"(detected) (Δ forgetting {interval(diag.forgetting)}" in line
    )
    assert "shows no detected difference in forgetting from KFAC (Δ forgetting" in line
    assert "forgets more than EKFAC and reaches lower average accuracy (detected)" in line
    assert line.index("the diagonal") < line.index("KFAC") < line.index("EKFAC")
    assert "a full-Fisher run cost 10x its wall time; λ at a grid edge" in line  # one λ tried
    assert "Not run with the full Fisher" not in text  # the one section is covered


def test_a_companion_without_records_is_named_with_its_command():
    text = companion_section(_runs(), [Companion("ablation", None)])
    assert "- `ablation`: no records here (`make ablation` makes them)." in text
    # the tutorial network: why no companion runs its full Fisher
    assert (
        "- Not run with the full Fisher: mnist-fmnist (bn = freeze) "
        "(P = 90,010: its dense Fisher would need 30.2 GiB)." in text
    )


def test_a_section_whose_dense_fisher_fits_is_listed_without_a_reason():
    runs = _runs(model="mlp", model_options={"hidden": 4})
    text = companion_section(runs, [Companion("ablation", None)])
    (line,) = [s for s in text.splitlines() if s.startswith("- Not run with the full Fisher: ")]
    assert line.endswith("hidden=4.") and "(P =" not in line


def test_no_companion_no_section():
    assert companion_section(_runs(), []) == ""


def test_only_the_full_fishers_largest_number_of_inputs_is_shown():
    """A row budget (N = 20 and 100): the answer pairs the structures at N = 100 only."""
    small = effect_records({"full-exact": 0.0, "diag-exact": +0.05}, fisher_samples=20)
    large = effect_records(EFFECTS, fisher_samples=100)
    runs = outcomes.summarise(small + large, [99])
    rows = main_rows(runs, full_comparisons(runs))
    assert sorted(c.label for c in rows) == [
        "ewc diag-exact (fisher_samples=100)", "ewc ekfac-exact", "ewc kfac-exact"
    ]  # fmt: skip
    assert all(c.reference == "ewc full-exact (fisher_samples=100)" for c in rows)


def _store(folder: Path, records, name: str) -> Path:
    for r in records:
        write_record(folder, r)
    (folder / "sweep.json").write_text(json.dumps({"name": name, "selection_seeds": [99]}))
    return folder


def test_build_report_ends_the_verdict_with_the_companions(tmp_path):
    own = _store(tmp_path / "default", effect_records({"diag-exact": 0, "kfac-exact": 0}), "d")
    full = _store(tmp_path / "full-fisher", effect_records(EFFECTS), "full-fisher")
    report = build_report(own, tmp_path / "out", companions=[full, tmp_path / "ablation"])
    text = report.read_text()
    verdict = text.split("## Verdict")[1].split("\n## ")[0]
    assert "### The true full Fisher against the diagonal, KFAC and EKFAC" in verdict
    assert "(`make full-fisher`, 10 paired test seeds" in verdict
    assert "- `ablation`: no records here (`make ablation` makes them)." in verdict
    plain = build_report(own, tmp_path / "plain").read_text()
    assert "The true full Fisher" not in plain


def test_the_report_command_takes_companions(tmp_path, capsys):
    """``benchmark report --companion`` (repeatable) as `make report` passes it."""
    from benchmark import cli

    own = _store(tmp_path / "default", effect_records({"diag-exact": 0, "kfac-exact": 0}), "d")
    full = _store(tmp_path / "full-fisher", effect_records(EFFECTS), "full-fisher")
    args = ["report", "--results", own, "--out", tmp_path / "out", "--companion", full]
    code = cli.main([str(a) for a in [*args, "--companion", tmp_path / "ablation"]])
    assert code == 0, capsys.readouterr().err
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert "(`make full-fisher`, 10 paired test seeds" in text
    assert "- `ablation`: no records here (`make ablation` makes them)." in text


def test_a_companion_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    from benchmark import cli

    own = _store(tmp_path / "default", effect_records({"diag-exact": 0, "kfac-exact": 0}), "d")
    (tmp_path / "notes.txt").write_text("x")
    args = ["report", "--results", own, "--out", tmp_path / "out"]
    code = cli.main([str(a) for a in [*args, "--companion", tmp_path / "notes.txt"]])
    err = capsys.readouterr().err
    assert code == 2 and "is not a folder" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "REPORT.md").exists()
