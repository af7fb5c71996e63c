"""The harness's commands: ``run``, ``sweep``, ``reproduce``, ``report``, ``experiments``.

Every ``RunConfig`` setting has a flag on ``run``; ``sweep`` and ``reproduce`` take an experiment
(built-in name or TOML path) and ``--set KEY=VALUE`` settings for every run. Bad names, values
and unknown keys fail before any training, with the valid choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..config import FIELD_HELP, RunConfig
from ..distributed import EXECUTORS, INSTALL, SCHEDULER_ENV, parse_scheduler
from ..errors import FAILED_RUNS_STATUS, UserError
from .common import (
    add_data_args,
    jobs_arg,
    parse_assignments,
    parse_value,
    positive_int,
    seed_list,
)

NOT_RUN_FLAGS = ("lr_grid",)
"""Settings ``run`` has no flag for: an experiment's selection sets them (a study's ``lrs``)."""


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    """``run``: one run, every setting a flag (tables of options as repeated ``KEY=VALUE``)."""
    p = sub.add_parser(
        "run",
        help="train one configuration and print its accuracy matrix",
        description="Run one configuration end to end (train, evaluate, consolidate per task).",
    )
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        if f.name in NOT_RUN_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, dict):
            p.add_argument(flag, action="append", metavar="KEY=VALUE", help=FIELD_HELP[f.name])
        elif isinstance(value, bool):
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=value, help=FIELD_HELP[f.name]
            )
        else:
            p.add_argument(
                flag,
                type=parse_value,
                default=value,
                help=f"{FIELD_HELP[f.name]} (default {value})",
            )
    p.add_argument("--results", default=None, help="also write the record into this results folder")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars"
    )
    add_data_args(p)
    p.set_defaults(func=cmd_run, subparser=p)


def add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    """``sweep`` and ``reproduce`` (the same flags; reproduce adds ``--out`` and ``--pipeline``)."""
    for name, text in (
        ("sweep", "run an experiment: lambda selection on validation, then every seed (resumable)"),
        ("reproduce", "sweep + data-pipeline timing + report: what `make reproduce` runs"),
    ):
        p = _add_sweep_like(sub, name, text)
        p.set_defaults(func=cmd_sweep if name == "sweep" else cmd_reproduce, subparser=p)


def _add_sweep_like(
    sub: argparse._SubParsersAction, name: str, text: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=text, description=text)
    p.add_argument(
        "--experiment",
        default="default",
        help="built-in experiment name or TOML path (default: default)",
    )
    p.add_argument(
        "--results", default=None, help="results folder (default results/<experiment name>)"
    )
    _add_parallel_args(p)
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="where to run (default: the experiment's, cpu)",
    )
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        help="comma-separated seeds (integers >= 0), overriding the experiment's",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="set a run setting for every run of the sweep (repeatable); settings the "
        "experiment decides (lam, seed, sequence, method, estimator, mode, "
        "estimator_options) are refused with the reason",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="also run again the runs that failed for a reason of their own (runs that "
        "failed for a reason outside themselves, e.g. missing data, are always retried)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for another sweep on the same results folder to finish (default: refuse)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    if name == "reproduce":
        _add_reproduce_args(p)
    add_data_args(p)
    return p


def _add_parallel_args(p: argparse.ArgumentParser) -> None:
    """``--executor``, ``--scheduler``, ``--jobs``, ``--threads``, ``--group-size``."""
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="process",
        help="where runs execute: process (a local process pool, default) or dask (a Dask "
        f"cluster, see --scheduler; needs {INSTALL})",
    )
    p.add_argument(
        "--scheduler",
        type=scheduler_arg,
        default=None,
        metavar="tcp://HOST:PORT|local:N",
        help="with --executor dask: a running scheduler's address (default "
        f"${SCHEDULER_ENV}), or local:N to start a LocalCluster of N single-threaded workers for "
        "the sweep (default local:JOBS)",
    )
    p.add_argument(
        "--jobs",
        type=jobs_arg,
        default=1,
        help="runs at once in a local process pool: a number, or auto (one per available core, "
        "what `make reproduce` uses); default 1 (in this process)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per run (default: the cores shared evenly among the jobs; with "
        "--jobs 1, torch's default, e.g. OMP_NUM_THREADS; under --executor dask, 1)",
    )
    p.add_argument(
        "--group-size",
        type=positive_int,
        default=1,
        help="train up to this many runs that differ only in lambda and seed together, as one "
        "stacked model (one record each; default 1: each run alone)",
    )


def scheduler_arg(text: str) -> Any:
    """An argparse type: ``tcp://HOST:PORT``, ``tls://HOST:PORT`` or ``local:N``."""
    try:
        return parse_scheduler(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--scheduler ")) from None


def _add_reproduce_args(p: argparse.ArgumentParser) -> None:
    """What ``reproduce`` adds to ``sweep``: the report folder and the pipeline timing."""
    p.add_argument("--out", default="reports", help="report folder (default reports)")
    p.add_argument(
        "--readme",
        default=None,
        help="also copy the report's verdict into this README's verdict block "
        "(what `make report` and `make reproduce` do with README.md)",
    )
    p.add_argument(
        "--pipeline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the DataLoader vs tensor epoch (real data only)",
    )


def add_report_parsers(sub: argparse._SubParsersAction) -> None:
    """``report`` and ``experiments``."""
    p = sub.add_parser(
        "report",
        help="rebuild the report from stored records alone",
        description="Rebuild REPORT.md, runs.csv and figures from a results folder.",
    )
    p.add_argument(
        "--experiment", default="default", help="experiment name (default results folder)"
    )
    p.add_argument("--results", default=None, help="results folder (default results/<experiment>)")
    p.add_argument("--out", default="reports", help="report folder (default reports)")
    p.add_argument(
        "--readme",
        default=None,
        help="also copy the report's verdict into this README's verdict block "
        "(what `make report` and `make reproduce` do with README.md)",
    )
    p.add_argument(
        "--started",
        type=float,
        default=None,
        help="when `make reproduce` started (seconds since the epoch, `date +%%s`): the report "
        "states the time from then to now as its end-to-end time and stores it in "
        "<results>/reproduce.json (what `make reproduce`'s last step does)",
    )
    p.add_argument(
        "--companion",
        action="append",
        default=[],
        metavar="RESULTS",
        help="results folder of an experiment that trains with the true full Fisher (e.g. "
        "results/full-fisher, results/ablation; repeatable): its answer ends the verdict; a "
        "folder without records is named as such (what `make report` and `make reproduce` pass)",
    )
    p.set_defaults(func=cmd_report, subparser=p)
    p = sub.add_parser("experiments", help="list the built-in experiments")
    p.set_defaults(func=cmd_experiments, subparser=p)


# -- handlers --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Validate and preflight, run, print the matrices and metrics; optionally store the record."""
    from .. import metrics
    from ..harness import run
    from ..preflight import preflight
    from ..records import write_record

    names = [f.name for f in dataclasses.fields(RunConfig) if f.name not in NOT_RUN_FLAGS]
    fields = {name: getattr(args, name) for name in names}
    for name in ("estimator_options", "model_options"):
        fields[name] = parse_assignments(fields[name], "--" + name.replace("_", "-"))
    if fields["method"] != "ewc" and fields["estimator"] == RunConfig().estimator:
        fields["estimator"] = None
    config = RunConfig.from_dict(fields)
    folders = {"--results": args.results} if args.results else {}
    preflight([config], root=args.data_root, download=args.download, folders=folders)
    record = run(config, root=args.data_root, progress=args.progress)
    print(
        f"run {record.run_id}: {config.sequence} {config.label} lam={config.lam:g} "
        f"seed={config.seed} -> {record.status}"
        + (f" ({record.message})" if record.message else "")
    )
    for name, row in zip(record.tasks, zip(*record.acc_test, strict=True), strict=True):
        print(
            f"  test accuracy on {name:>14}: "
            + " ".join("  n/a " if v is None else f"{v:.4f}" for v in row)
        )
    print(
        f"  average accuracy {metrics.average_accuracy(record.acc_test)}, forgetting "
        f"{metrics.forgetting(record.acc_test)}, bwt {metrics.backward_transfer(record.acc_test)}"
    )
    if args.results:
        print(f"  record: {write_record(Path(args.results), record)}")
    return 0 if record.status == "ok" else FAILED_RUNS_STATUS


def _experiment(args: argparse.Namespace) -> Any:
    from ..sweep import load_experiment

    overrides = parse_assignments(args.overrides, "--set")
    exp = load_experiment(args.experiment, overrides)
    if args.seeds:
        exp.set_test_seeds(list(args.seeds))
    return exp


def _results(args: argparse.Namespace, name: str) -> Path:
    return Path(args.results) if args.results else Path("results") / name


def _print_plan(exp: Any) -> None:
    n_sel = len({c.run_id for c in exp.selection_configs()})
    from ..selection import family_key

    families = {family_key(g.base.to_dict()): g for g in exp.groups}  # one lr per family runs
    n_test = sum(len(g.seeds or exp.seeds) for g in families.values())
    print(
        f"experiment {exp.name}: {len(exp.groups)} groups, {n_sel} selection runs (seeds "
        f"{exp.selection_seeds}), up to {n_test} test runs (seeds {exp.all_test_seeds()})"
    )


def _sweep(args: argparse.Namespace, exp: Any, out: Path | None) -> dict[str, Any]:
    """Run the sweep and print its summary (to stderr, beside the progress bars)."""
    from ..sweep import run_sweep, summary_lines

    results = _results(args, exp.name)
    meta = run_sweep(
        exp,
        results,
        jobs=args.jobs,
        threads=args.threads,
        group_size=args.group_size,
        root=args.data_root,
        download=args.download,
        retry_failed=args.retry_failed,
        device=args.device,
        wait=args.wait,
        out=out,
        executor=args.executor,
        scheduler=args.scheduler,
    )
    print(f"sweep {exp.name} in {results}:", file=sys.stderr)
    for line in summary_lines(meta):
        print(f"  {line}", file=sys.stderr)
    return meta


def _failed_note(meta: dict[str, Any]) -> str:
    from ..sweep import failed_runs

    failed = failed_runs(meta)
    env = sum(f["failure"] != "run" for f in failed)
    return (
        f"{len(failed)} runs failed ({env} for reasons outside the run, retried when you run the "
        f"same command again; {len(failed) - env} for reasons of their own, retried with "
        "--retry-failed)"
    )


def cmd_sweep(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Run (or resume) an experiment's sweep; exit 1 when a selected or test run failed."""
    exp = _experiment(args)
    _print_plan(exp)
    if args.dry_run:
        from ..experiment import group_names

        for name, g in zip(group_names(exp.groups), exp.groups, strict=True):
            print(f"  {name}: lambdas {list(g.lambdas)}")
        return 0
    meta = _sweep(args, exp, None)
    from ..sweep import failed_runs

    if failed_runs(meta):
        print(f"error: {_failed_note(meta)}", file=sys.stderr)
        return FAILED_RUNS_STATUS
    return 0


def cmd_report(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Rebuild the report from records; exit 1 when a run it covers failed."""
    from ..outcomes import load_meta, load_records
    from ..preflight import require_folders
    from ..report import build_report
    from ..selection import selection_seeds_of

    results = _results(args, Path(args.experiment).stem)
    if not (results / "runs").is_dir():
        raise UserError(f"no records in {results / 'runs'}: run the sweep first (make reproduce)")
    require_folders({"--out": args.out})
    for companion in args.companion:
        if Path(companion).exists() and not Path(companion).is_dir():
            raise UserError(
                f"--companion {companion} is not a folder: give an experiment's results folder "
                "(e.g. results/full-fisher), which holds runs/"
            )
    if args.readme:
        _readme(args)
    if args.started is not None:
        from .. import clock

        try:
            clock.record(results, args.started)
        except ValueError as err:
            raise UserError(str(err)) from None
    meta = load_meta(results)
    path = build_report(
        results,
        Path(args.out),
        selection_seeds=selection_seeds_of(meta),
        companions=[Path(c) for c in args.companion],
    )
    print(f"wrote {path}")
    _sync_readme(args, path)
    failed = [r for r in load_records(results, meta) if r.status == "failed"]
    if failed:
        print(
            f"error: {len(failed)} of the reported runs failed (the report counts them as "
            "excluded); rerun the sweep to retry them",
            file=sys.stderr,
        )
        return FAILED_RUNS_STATUS
    return 0


def _readme(args: argparse.Namespace) -> Path:
    """``--readme``'s path, checked before any work (a sweep must not end in this error)."""
    readme = Path(args.readme)
    if not readme.is_file():
        raise UserError(f"--readme {readme} is not a file")
    return readme


def _sync_readme(args: argparse.Namespace, report: Path) -> None:
    """Copy the report's verdict into ``--readme`` (when given)."""
    if not getattr(args, "readme", None):
        return
    from ..report.verdict import sync_readme

    readme = _readme(args)
    try:
        changed = sync_readme(readme, report)
    except ValueError as err:
        raise UserError(str(err)) from None
    print(f"{'updated' if changed else 'unchanged'}: the verdict in {readme}")


def cmd_reproduce(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]
) -> int:
    """Sweep, pipeline timing (real data), report; no report when a run failed (exit 1)."""
    from ..costs.pipeline import measure
    from ..report import build_report
    from ..sweep import failed_runs

    exp = _experiment(args)
    if args.readme:
        _readme(args)
    if args.dry_run:
        return cmd_sweep(args, parser, argv)
    _print_plan(exp)
    meta = _sweep(args, exp, Path(args.out))
    if failed_runs(meta):
        print(
            f"error: {_failed_note(meta)}; the report was not rebuilt (`make report` builds "
            "one from what finished)",
            file=sys.stderr,
        )
        return FAILED_RUNS_STATUS
    results = _results(args, exp.name)
    uses_real = any(g.base.data == "real" for g in exp.groups)
    if args.pipeline and uses_real and not (results / "pipeline.json").exists():
        print("timing one epoch: DataLoader + ToTensor vs in-memory tensors", file=sys.stderr)
        (results / "pipeline.json").write_text(
            json.dumps(measure(args.data_root), indent=1, sort_keys=True)
        )
    path = build_report(results, Path(args.out), selection_seeds=exp.selection_seeds)
    print(f"wrote {path}")
    _sync_readme(args, path)
    return 0


def cmd_experiments(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]
) -> int:
    """List built-in experiments with their descriptions."""
    from ..sweep import builtin_experiments, load_experiment

    for name in builtin_experiments():
        exp = load_experiment(name)
        print(f"{name:>10}: {exp.description.strip().splitlines()[0] if exp.description else ''}")
    return 0
