"""The benchmark's reports, rebuilt from what the measuring code recorded (never measuring).

- REPORT.md, runs.csv and figures/ from a sweep's run records: ``build_report`` (text in
  ``results``, figures in ``figures``, the records' view in ``benchmark.outcomes``);
- STUDY.md from the approximation study: ``write_study`` (``study``, ``study_figures``);
- timing.md from a timing record: ``write_timing_reports`` (``timing``);
- scaling.md from a scaling record: ``write_scaling_reports`` (``scaling``).

Every report formats through ``format`` (numbers, bytes, tables, figure setup, one palette) and
opens with the provenance lines of ``provenance``. Report text depends on the records and
metadata only (no clock, no paths, no library versions), so it is golden-tested.

``build_report(results_dir, out_dir)`` reads ``results_dir/runs/*.json``, the optional
``results_dir/sweep.json`` (experiment metadata: name, description, protocol, command, machine,
git SHA, start, end, duration) and ``results_dir/pipeline.json`` (data-pipeline epoch timing),
chooses lambda per group on the validation split (``selection``), and writes

- ``out_dir/runs.csv``: one row per run (``results.CSV_COLUMNS``);
- ``out_dir/REPORT.md``: provenance, the tutorial reproduction table, per-sequence results with
  95% confidence intervals over seeds and paired tests against ``ewc diag-exact``, the chosen
  lambdas, the cost table, and the figures;
- ``out_dir/figures/*.png``: accuracy-matrix heatmaps, per-task accuracy curves, the lambda sweep
  as a stability-plasticity curve, and cost against accuracy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from .. import clock
from ..errors import UserError
from ..grouped_check import load_checks as load_grouped_checks
from ..outcomes import Run, load_meta, load_pipeline, load_records, summarise
from ..selection import selection_seeds_of
from ..threads import load_checks
from .companions import Companion
from .figures import FIGURE_PREFIXES, draw_figure, planned_figures
from .results import render_markdown, runs_csv
from .scaling import write_reports as write_scaling_reports
from .study import write_study
from .timing import write_reports as write_timing_reports

__all__ = [
    "NoResultsError",
    "build_report",
    "see_also",
    "write_scaling_reports",
    "write_study",
    "write_timing_reports",
]

SEE_ALSO = {
    "STUDY.md": "how good each Fisher approximation is (full vs KFAC vs diagonal), and whether "
    "it matters for forgetting (`make study`)",
    "timing.md": "what each estimator costs in time and memory, against the naive loop and the "
    "floor (`make timing`)",
}


class NoResultsError(UserError):
    """A results folder without a single finished run: there is nothing to report."""


def build_report(
    results_dir: Path,
    out_dir: Path,
    *,
    selection_seeds: Collection[int] | None = None,
    meta: dict[str, Any] | None = None,
    companions: Sequence[Path] = (),
) -> Path:
    """Build REPORT.md, runs.csv and figures/ in ``out_dir`` from the records in ``results_dir``.

    Args:
        results_dir: the sweep's results folder (``runs/*.json``; optional ``sweep.json`` and
            ``pipeline.json``).
        out_dir: where to write (created if needed). Figures from an earlier build that this one
            does not draw are removed from ``out_dir/figures``.
        selection_seeds: the seeds whose mean validation score chooses lambda (default: the
            ones ``sweep.json`` names, ``selection.selection_seeds_of``).
        meta: experiment metadata; overrides the keys of ``sweep.json``.
        companions: results folders of the experiments that train with the true full Fisher
            (``full-fisher``, ``ablation``): their answer ends the verdict
            (``companions.companion_section``); a folder without records is named as such.

    Returns:
        The path of REPORT.md.

    Raises:
        FileNotFoundError: no results directory or no records in it.
        NoResultsError: not one run finished.
        ValueError: a malformed record or metadata file.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    meta_all = load_meta(results_dir, meta)
    records = load_records(results_dir, meta_all)
    if not any(r.status == "ok" for r in records):
        counts = Counter(r.status for r in records)
        raise NoResultsError(
            f"no finished run in {results_dir} ({counts['failed']} failed, {counts['diverged']} "
            f"diverged): nothing to report, REPORT.md not written; run the sweep again "
            f"(failures outside the runs are retried) or see runs/*.json for the reasons"
        )
    seeds = tuple(selection_seeds or selection_seeds_of(meta_all))
    runs = summarise(records, seeds)
    meta_all = {
        **meta_all,
        "thread_checks": load_checks(results_dir, runs),
        "grouped_checks": load_grouped_checks(results_dir, runs),
        "end_to_end": clock.load(results_dir),
    }
    pipeline = load_pipeline(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "runs.csv").write_text(runs_csv(runs))
    write_figures(runs, out_dir / "figures")
    report = out_dir / "REPORT.md"
    others = [load_companion(Path(c)) for c in companions]
    text = render_markdown(runs, meta_all, pipeline, seeds, others)
    report.write_text(text + see_also(out_dir))
    return report


def write_figures(runs: Sequence[Run], fig_dir: Path) -> None:
    """Draw the report's figures into ``fig_dir``; remove report figures it no longer draws."""
    fig_dir.mkdir(exist_ok=True)
    specs = planned_figures(runs)
    wanted = {s.name for s in specs}
    for old in fig_dir.glob("*.png"):
        if old.name.startswith(FIGURE_PREFIXES) and old.name not in wanted:
            old.unlink()
    for spec in specs:
        draw_figure(spec, runs, fig_dir)


def load_companion(results_dir: Path) -> Companion:
    """A companion experiment's runs, each chosen by its own selection seeds (None: no records)."""
    if not any((results_dir / "runs").glob("*.json")):
        return Companion(results_dir.name, None)
    meta = load_meta(results_dir)
    runs = summarise(load_records(results_dir, meta), selection_seeds_of(meta))
    return Companion(str(meta.get("name") or results_dir.name), runs)


def see_also(out_dir: Path) -> str:
    """Links to the companion reports present in ``out_dir`` (none: empty string)."""
    lines = [
        f"- [{name}]({name}): {text}"
        for name, text in SEE_ALSO.items()
        if (out_dir / name).exists()
    ]
    return "\n## See also\n\n" + "\n".join(lines) + "\n" if lines else ""
