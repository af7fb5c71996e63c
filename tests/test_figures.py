"""REPORT.md's figures and the one palette: colours, planning, and drawing on edge cases.

- The palette (``benchmark.report.palette``): every estimator and method label has a fixed
  colour; the labels of each experiment are told apart (CIELAB distance); no other report
  module spells a colour.
- Planning (``figures.planned_figures``): which figures a set of runs supports, in which order,
  with which captions.
- Drawing (``figures.draw_figure``): every planned figure is written as a PNG, also for a section
  with only baseline and joint, a method with one seed, a method whose every run diverged, runs
  without selection seeds, a single selection seed, and a sequence of three tasks.
"""

from __future__ import annotations

import ast
import itertools
import re
import struct
from pathlib import Path

import numpy as np
import pytest

import estimators
from benchmark import outcomes
from benchmark.config import RunConfig
from benchmark.records import RunRecord
from benchmark.report import figures, palette
from benchmark.report.figures_common import paired_diffs
from benchmark.report.figures_sequence import heatmap_scale, lambda_curve
from benchmark.sweep import load_experiment

REPORT_DIR = Path(__file__).resolve().parents[1] / "benchmark" / "report"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPERIMENTS = tuple(sorted(p.stem for p in (REPORT_DIR.parent / "experiments").glob("*.toml")))
"""Every built-in experiment (benchmark/experiments/*.toml)."""
MAX_LIGHTNESS = 85.0
"""No method shade is near white: CIELAB L* at most this (white is 100)."""


# -- colour arithmetic -------------------------------------------------------------------------


def _lab(hex_colour: str) -> np.ndarray:
    """CIELAB (D65) of an sRGB hex colour."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def delta_e(a: str, b: str) -> float:
    """CIE76 colour difference (about 2.3 is just noticeable)."""
    return float(np.linalg.norm(_lab(a) - _lab(b)))


def test_delta_e_of_known_colours():
    assert delta_e("#000000", "#ffffff") == pytest.approx(100.0, abs=0.01)
    assert delta_e("#2b7bba", "#2b7bba") == 0.0


# -- the palette -------------------------------------------------------------------------------

HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def _labels_to_colour() -> list[str]:
    names = estimators.names()
    return [
        *names,
        *(f"ewc {n}" for n in names),
        "baseline",
        "l2",
        "joint",
        "mas",
        "mas-online",
        "ewc-online diag-exact",
        "ewc lowrank-exact rank=20",
        "ewc lowrank-exact rank=200",
        "floor",
    ]


@pytest.mark.parametrize("label", _labels_to_colour())
def test_every_label_gets_a_fixed_colour(label):
    shade = palette.colour(label)
    assert HEX.match(shade), (label, shade)
    assert shade != palette.OTHER_COLOUR, label
    assert palette.colour(label) == shade  # deterministic
    assert palette.colour(f"{label} (epochs=4)") == shade  # a variant suffix keeps it


def test_ewc_and_online_share_the_estimators_colour_but_not_the_line():
    assert palette.colour("ewc kfac-mc") == palette.colour("kfac-mc")
    assert palette.colour("ewc-online diag-exact") == palette.colour("ewc diag-exact")
    assert palette.line_style("ewc-online diag-exact") != palette.line_style("ewc diag-exact")
    assert palette.marker("ewc-online diag-exact") != palette.marker("ewc diag-exact")
    assert palette.colour("mas-online") == palette.colour("mas")
    assert palette.colour("l2") == palette.colour("identity")


def test_structure_is_the_family_and_rank_the_shade():
    assert palette.family("ewc kfac-mc") == "kfac"
    assert palette.family("ewc-online diag-exact") == "diag"
    assert palette.family("ewc lowrank-exact rank=20") == "lowrank"
    assert palette.family("l2") == palette.family("identity") == "l2"
    assert palette.family("mas-online") == "mas"
    assert palette.family("baseline") == "baseline"
    for structure, shades in palette.SHADES.items():
        for mode in ("exact", "mc", "empirical"):
            assert palette.colour(f"ewc {structure}-{mode}") in shades
    ranks = [10, 20, 50, 100, 200, 500, 1000]
    colours = [palette.colour(f"ewc lowrank-exact rank={k}") for k in ranks]
    assert all(c in palette.SHADES["lowrank"] for c in colours)
    for a, b in itertools.pairwise(colours):  # neighbours on the 1-2-5 ladder differ
        assert a != b
    assert palette.colour("ewc lowrank-exact rank=20") != palette.colour(
        "ewc lowrank-exact rank=200"
    )
    variant = "ewc kfac-exact layers=1"  # another label option: another shade of its family
    assert palette.colour(variant) in palette.SHADES["kfac"]
    assert palette.colour(variant) != palette.colour("ewc kfac-exact")
    # the ablation's named variants, shown side by side, each have a hue of their own
    ablation = [f"ewc kfac-exact {text}" for text in palette.VARIANT_COLOURS]
    assert len({palette.colour(label) for label in ablation}) == len(ablation)


@pytest.mark.parametrize("structure", sorted(palette.SHADES))
def test_shades_of_a_family_are_far_apart_and_not_near_white(structure):
    shades = palette.SHADES[structure]
    assert len(set(shades)) == len(shades)
    for a, b in itertools.combinations(shades, 2):
        assert delta_e(a, b) >= palette.MIN_DELTA_E, (structure, a, b, delta_e(a, b))
    for shade in shades:
        assert _lab(shade)[0] <= MAX_LIGHTNESS, (structure, shade)


def _experiment_labels(name: str) -> set[str]:
    return {g.base.label for g in load_experiment(name).groups}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_labels_of_one_experiment_are_told_apart(name):
    """Distinct labels that appear together get colours at least MIN_DELTA_E apart in CIELAB.

    CIE76 distance 20 is about nine times the just-noticeable difference (2.3): two dots or
    lines of such colours are told apart at a glance, also in a legend. The one exception is
    by design: the online mode shares its estimator's colour and differs in line and marker.
    """
    labels = sorted(_experiment_labels(name))
    assert "ewc diag-exact" in labels
    for a, b in itertools.combinations(labels, 2):
        ca, cb = palette.colour(a), palette.colour(b)
        if palette.estimator_of(a) == palette.estimator_of(b):
            assert ca == cb and palette.line_style(a) != palette.line_style(b), (a, b)
            continue
        assert delta_e(ca, cb) >= palette.MIN_DELTA_E, (name, a, ca, b, cb, delta_e(ca, cb))


def test_default_experiment_has_two_lowrank_shades():
    labels = _experiment_labels("default")
    lowrank = sorted(lab for lab in labels if "lowrank" in lab)
    assert len(lowrank) == 2
    assert len({palette.colour(lab) for lab in lowrank}) == 2


COLOUR_KEYWORDS = {
    "c",
    "color",
    "colors",
    "mec",
    "mfc",
    "ecolor",
    "facecolor",
    "edgecolor",
    "markeredgecolor",
    "markerfacecolor",
}


def _spelled_colours(path: Path) -> list[str]:
    """Colours a module spells: hex literals, and literals given as a colour argument.

    ``"none"`` (no fill) is not a colour.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        literal = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if literal and re.fullmatch(r"#[0-9a-fA-F]{3,8}", node.value):
            found.append(f"{path.name}:{node.lineno} {node.value}")
        colour_values = []
        if isinstance(node, ast.keyword) and node.arg in COLOUR_KEYWORDS:
            colour_values.append(node.value)
        if isinstance(node, ast.Dict):
            colour_values += [
                v
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant) and k.value in COLOUR_KEYWORDS
            ]
        for value in colour_values:
            if isinstance(value, ast.Constant) and value.value not in (None, "none"):
                found.append(f"{path.name}:{value.lineno} {value.value!r}")
    return found


def test_no_report_module_but_the_palette_spells_a_colour():
    modules = sorted(p for p in REPORT_DIR.glob("*.py") if p.name != "palette.py")
    assert any(p.name == "figures.py" for p in modules)
    spelled = [hit for path in modules for hit in _spelled_colours(path)]
    assert spelled == []


def test_the_colour_check_finds_spelled_colours(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('ax.plot(x, color="red")\nstyle = {"color": "k"}\nC = "#12ab34"\n')
    assert len(_spelled_colours(module)) == 3


# -- hand-made runs ----------------------------------------------------------------------------

BASE = RunConfig(data="synthetic", bn="freeze")
METHODS = {
    "baseline": {"method": "baseline", "estimator": None},
    "joint": {"method": "joint", "estimator": None},
    "l2": {"method": "l2", "estimator": None},
    "ewc diag-exact": {},
    "ewc kfac-exact": {"estimator": "kfac-exact"},
    "ewc lowrank-exact rank=20": {
        "estimator": "lowrank-exact",
        "estimator_options": {"rank": 20},
    },
}


def _matrix(T: int, level: float, joint: bool = False) -> list[list[float]]:
    """An accuracy matrix: ``level`` on the diagonal, decaying below it, chance above."""
    if joint:
        return [[level] * T]
    return [[level - 0.1 * (i - j) if j <= i else 0.1 for j in range(T)] for i in range(T)]


def _record(config: RunConfig, T: int, level: float, status: str = "ok") -> RunRecord:
    joint = config.method == "joint"
    rows = 1 if joint else T
    test = _matrix(T, level, joint)
    if status != "ok":
        test[-1] = [None] * T
    return RunRecord(
        run_id=config.run_id,
        config=config.to_dict(),
        status=status,
        message=None if status == "ok" else "loss became nan",
        tasks=[f"task-{t}" for t in range(T)],
        acc_val=test,
        acc_test=test,
        train_seconds=[1.0] * rows,
        estimate_seconds=[0.1] * rows if config.method == "ewc" else [0.0] * rows,
        eval_seconds=[0.1] * rows,
        curvature_bytes=[100] * rows,
        step_ms=[1.0] * rows,
        penalty_ms=[None] + [0.5] * (rows - 1) if config.method == "ewc" else [None] * rows,
        train_loss=[0.1] * rows,
        peak_rss_mb=100.0,
    )


def _records(
    labels: list[str],
    selection_seeds: list[int],
    test_seeds: list[int],
    T: int = 2,
    diverged: tuple[str, ...] = (),
    base: RunConfig = BASE,
) -> list[RunRecord]:
    """A small sweep: lambda 1 and 10 on the selection seeds (10 wins), 10 on the test seeds.

    Each label's accuracy level depends on the method and the seed; every run of a label in
    ``diverged`` diverges.
    """
    records = []
    for k, label in enumerate(labels):
        config = base.replace(**METHODS[label])
        penalised = config.method not in ("baseline", "joint")
        status = "diverged" if label in diverged else "ok"
        for seed in selection_seeds if penalised else []:
            for lam, gain in ((1.0, 0.0), (10.0, 0.05)):
                c = config.replace(lam=lam, seed=seed)
                records.append(_record(c, T, 0.6 + 0.03 * k + gain + 0.01 * (seed % 3), status))
        for seed in test_seeds:
            c = config.replace(lam=10.0 if penalised else 0.0, seed=seed)
            records.append(_record(c, T, 0.6 + 0.03 * k + 0.02 * (seed % 3), status))
    return records


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path.name
    width, height = struct.unpack(">II", data[16:24])
    assert 300 < width < 4000 and 200 < height < 4000, (path.name, width, height)


def _draw_all(runs: list[outcomes.Run], fig_dir: Path) -> list[figures.FigureSpec]:
    """Draw every planned figure; check each is a PNG; the specs."""
    fig_dir.mkdir(exist_ok=True)
    specs = figures.planned_figures(runs)
    assert len({s.name for s in specs}) == len(specs)
    for spec in specs:
        path = figures.draw_figure(spec, runs, fig_dir)
        assert path == fig_dir / spec.name
        _check_png(path)
    assert sorted(p.name for p in fig_dir.glob("*.png")) == sorted(s.name for s in specs)
    return specs


ALL = list(METHODS)


# -- planning ----------------------------------------------------------------------------------


def test_full_section_plans_every_kind_forest_first(tmp_path):
    runs = outcomes.summarise(_records(ALL, [100, 101, 102], [0, 1, 2, 3]), [100, 101, 102])
    specs = _draw_all(runs, tmp_path)
    assert [s.kind for s in specs] == ["forest", "seeds", "lambda", "tasks", "cost"]
    assert specs[0].name == "forest_mnist-fmnist_freeze.png"
    forest, seeds, lam, tasks, _ = (s.caption for s in specs)
    assert "95% Student-t interval" in forest and "n = 4 seed pairs" in forest
    assert "the seeds' own differences" in forest
    assert "n = 4 test seeds" in seeds
    assert "3 selection seeds" in lam and "band" in lam and "diag, kfac, lowrank, l2" in lam
    assert "task-0" in tasks and "task-1" in tasks
    for prefix in figures.FIGURE_PREFIXES:
        # heatmaps need three tasks; the budget, runs at two fisher_samples (test_row_budget.py)
        assert any(s.name.startswith(prefix) for s in specs) or prefix in ("heatmap_", "budget_")


def test_heatmaps_only_from_three_tasks_and_two_bn_modes_in_order(tmp_path):
    records = _records(ALL, [100], [0, 1], T=3) + _records(
        ["baseline", "ewc diag-exact"], [100], [0, 1], T=3, base=BASE.replace(bn="update")
    )
    runs = outcomes.summarise(records, [100])
    specs = _draw_all(runs, tmp_path)
    assert [(s.kind, s.bn) for s in specs] == [
        ("forest", "freeze"),
        ("forest", "update"),
        ("seeds", "freeze"),
        ("seeds", "update"),
        ("lambda", "freeze"),
        ("lambda", "update"),
        ("tasks", "freeze"),
        ("tasks", "update"),
        ("heatmap", "freeze"),
        ("heatmap", "update"),
        ("cost", None),
    ]
    lam = next(s for s in specs if s.kind == "lambda")
    assert "one selection seed's value (no band)" in lam.caption
    assert "one panel per method" in next(s for s in specs if s.kind == "tasks").caption
    assert "log scale" in next(s for s in specs if s.kind == "heatmap").caption


def test_section_with_only_baseline_and_joint(tmp_path):
    runs = outcomes.summarise(_records(["baseline", "joint"], [100], [0, 1, 2]), [100])
    specs = _draw_all(runs, tmp_path)
    assert [s.kind for s in specs] == ["seeds", "tasks"]  # no reference, penalty or lambda


def test_method_with_one_seed(tmp_path):
    runs = outcomes.summarise(_records(ALL, [100], [0]), [100])
    specs = _draw_all(runs, tmp_path)
    assert "n = 1 seed pairs" in specs[0].caption


def test_method_whose_every_run_diverged(tmp_path):
    records = _records(ALL, [100, 101], [0, 1, 2], diverged=("ewc kfac-exact",))
    runs = outcomes.summarise(records, [100, 101])
    assert not any(r.selected for r in runs if r.label == "ewc kfac-exact")
    specs = _draw_all(runs, tmp_path)
    assert [s.kind for s in specs] == ["forest", "seeds", "lambda", "tasks", "cost"]
    mine = [r for r in runs if r.label == "ewc kfac-exact" and r.role == "selection"]
    assert lambda_curve(mine) == ([], [1.0, 10.0])  # every lambda marked, none drawn


def test_reference_diverged_leaves_out_the_forest(tmp_path):
    records = _records(ALL, [100], [0, 1], diverged=("ewc diag-exact",))
    runs = outcomes.summarise(records, [100])
    specs = _draw_all(runs, tmp_path)
    assert "forest" not in {s.kind for s in specs}


def test_no_selection_runs(tmp_path):
    """Records of an older sweep: no run on the selection seeds, so no lambda figure."""
    runs = outcomes.summarise(_records(ALL, [], [0, 1, 2]), [100])
    specs = _draw_all(runs, tmp_path)
    assert "lambda" not in {s.kind for s in specs}
    assert [s.kind for s in specs] == ["seeds", "tasks", "cost"]  # nothing penalised chosen


def test_a_selection_seed_that_is_also_a_test_seed(tmp_path):
    """Older sweeps: the selection seed also ran the chosen lambda (shown as a selection run)."""
    records: dict[str, RunRecord] = {}
    for r in _records(ALL, [0], [0, 1, 2]):
        records.setdefault(r.run_id, r)  # seed 0 at lambda 10: one run, the selection one
    runs = outcomes.summarise(list(records.values()), [0])
    specs = _draw_all(runs, tmp_path)
    assert {"forest", "lambda"} <= {s.kind for s in specs}


# -- the numbers behind the figures ------------------------------------------------------------


def test_forest_differences_are_paired_by_seed():
    runs = outcomes.summarise(_records(ALL, [100], [0, 1, 2, 4]), [100])
    kfac = outcomes.selected(runs, "mnist-fmnist", "freeze", "ewc kfac-exact")
    ref = outcomes.selected(runs, "mnist-fmnist", "freeze", "ewc diag-exact")
    diffs, test = paired_diffs(kfac, ref[1:])  # seed 0 of the reference left out
    assert test["n"] == 3 and len(diffs) == 3
    assert diffs == pytest.approx([0.03, 0.03, 0.03])
    assert test["mean_diff"] == pytest.approx(0.03)


def test_lambda_curve_means_over_selection_seeds():
    runs = outcomes.summarise(_records(["ewc diag-exact"], [100, 101], [0]), [100, 101])
    mine = [r for r in runs if r.role == "selection"]
    points, failed = lambda_curve(mine)
    assert failed == []
    assert [p[0] for p in points] == [1.0, 10.0]
    assert points[1][1] - points[0][1] == pytest.approx(0.05)
    assert points[0][2] is not None  # two seeds: a band


def test_heatmap_scale_spans_the_errors_below_the_diagonal():
    a = np.array([[0.9, 0.1, 0.1], [0.8, 0.9, 0.1], [0.5, 0.7, 0.95]])
    low, high = heatmap_scale([a])
    assert (low, high) == pytest.approx((0.2, 0.5))
    low, high = heatmap_scale([np.array([[0.9, 0.1], [0.95, 0.9]])])
    assert high / low == pytest.approx(2.0)  # widened to a factor of two
    assert heatmap_scale([]) == (pytest.approx(1e-3), 1.0)
