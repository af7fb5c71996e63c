"""The harness's commands: ``run``, ``sweep``, ``report``, ``pipeline``, ``reproduce``.

Every ``RunConfig`` setting has a flag on ``run``; ``sweep`` and ``reproduce`` take an experiment
(built-in name or TOML path) and ``--set KEY=VALUE`` overrides of its defaults. Bad names, values
and unknown keys fail before any training, with the valid choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .config import FIELD_HELP, RunConfig
from .errors import FAILED_RUNS_STATUS, UserError


def parse_value(text: str) -> Any:
    """``'3' -> 3``, ``'0.5' -> 0.5``, ``'true' -> True``, ``'null' -> None``, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """``['epochs=1', 'bn=update'] -> {'epochs': 1, 'bn': 'update'}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def seed_list(text: str) -> list[int]:
    """An argparse type: comma-separated seeds, each an integer >= 0, at least one."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 0 (e.g. 0,1,2), got {text!r}"
        )
    return seeds


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="datasets root (ROOT/MNIST/raw, ROOT/FashionMNIST/raw); "
        "default $EWC_BENCH_DATA, else ./data",
    )
    p.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="download missing datasets through torchvision (checksums verified; needs the "
        "network; default: --no-download, `make reproduce` passes --download unless DOWNLOAD=0)",
    )


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    """``run``: one run, every setting a flag."""
    p = sub.add_parser(
        "run",
        help="train one configuration and print its accuracy matrix",
        description="Run one configuration end to end (train, evaluate, fit curvature per task).",
    )
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if f.name == "estimator_options":
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
    _common(p)
    p.set_defaults(func=cmd_run, subparser=p)


def add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    """``sweep``, ``report``, ``pipeline``, ``reproduce``, ``experiments``."""
    for name, text in (
        ("sweep", "run an experiment: lambda selection on validation, then every seed (resumable)"),
        ("reproduce", "sweep + data-pipeline timing + report: what `make reproduce` runs"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--experiment",
            default="default",
            help="built-in experiment name or TOML path (default: default)",
        )
        p.add_argument(
            "--results", default=None, help="results folder (default results/<experiment name>)"
        )
        p.add_argument(
            "--jobs",
            type=positive_int,
            default=1,
            help="runs in parallel (local process pool; default 1)",
        )
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
            p.add_argument("--out", default="reports", help="report folder (default reports)")
            p.add_argument(
                "--pipeline",
                action=argparse.BooleanOptionalAction,
                default=True,
                help="measure the DataLoader vs tensor epoch (real data only)",
            )
        _common(p)
        p.set_defaults(func=cmd_sweep if name == "sweep" else cmd_reproduce, subparser=p)
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
    p.set_defaults(func=cmd_report, subparser=p)
    p = sub.add_parser(
        "pipeline", help="time one epoch: tutorial DataLoader+ToTensor vs in-memory tensors"
    )
    p.add_argument("--out", default=None, help="write the JSON here (default: print it)")
    _common(p)
    p.set_defaults(func=cmd_pipeline, subparser=p)
    p = sub.add_parser(
        "study",
        help="how good is each Fisher approximation (full vs KFAC vs diagonal) -> OUT/STUDY.md",
        description="The approximation study: every estimator against the exact Fisher (a "
        "small MLP, dense) and against the exact low-rank Fisher of the tutorial network, with "
        "convergence in N and mc samples, the batched estimator's bias, cost, and the harness's "
        "forgetting beside each estimator's error.",
    )
    p.add_argument("--out", default="reports", help="output folder (default reports)")
    p.add_argument(
        "--results",
        default="results/default",
        help="harness results to link errors to forgetting (default results/default)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    p.add_argument("--synthetic", action="store_true", help="synthetic stand-in data, for tests")
    _common(p)
    p.set_defaults(func=cmd_study, subparser=p)
    p = sub.add_parser("experiments", help="list the built-in experiments")
    p.set_defaults(func=cmd_experiments, subparser=p)


# -- handlers --------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Validate and preflight, run, print the matrices and metrics; optionally store the record."""
    from . import metrics
    from .harness import run
    from .preflight import preflight
    from .records import write_record

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    fields["estimator_options"] = parse_assignments(args.estimator_options, "--estimator-options")
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
    from .sweep import load_experiment

    overrides = parse_assignments(args.overrides, "--set")
    exp = load_experiment(args.experiment, overrides)
    if args.seeds:
        exp.seeds = list(args.seeds)
        if exp.selection_seed not in exp.seeds:
            exp.selection_seed = exp.seeds[0]
    return exp


def _results(args: argparse.Namespace, name: str) -> Path:
    return Path(args.results) if args.results else Path("results") / name


def _print_plan(exp: Any) -> None:
    n_sel = len({c.run_id for c in exp.selection_configs()})
    print(
        f"experiment {exp.name}: {len(exp.groups)} groups, {n_sel} selection runs, "
        f"up to {len(exp.groups) * len(exp.seeds)} final runs (seeds {exp.seeds})"
    )


def _sweep(args: argparse.Namespace, exp: Any, out: Path | None) -> dict[str, Any]:
    """Run the sweep and print its summary (to stderr, beside the progress bars)."""
    from .sweep import run_sweep, summary_lines

    results = _results(args, exp.name)
    meta = run_sweep(
        exp,
        results,
        jobs=args.jobs,
        root=args.data_root,
        download=args.download,
        retry_failed=args.retry_failed,
        device=args.device,
        wait=args.wait,
        out=out,
    )
    print(f"sweep {exp.name} in {results}:", file=sys.stderr)
    for line in summary_lines(meta):
        print(f"  {line}", file=sys.stderr)
    return meta


def _failed_note(meta: dict[str, Any]) -> str:
    from .sweep import failed_runs

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
        for g in exp.groups:
            print(
                f"  {g.base.sequence:<18} bn={g.base.bn:<6} {g.base.label:<28} "
                f"lambdas {list(g.lambdas)}"
            )
        return 0
    meta = _sweep(args, exp, None)
    from .sweep import failed_runs

    if failed_runs(meta):
        print(f"error: {_failed_note(meta)}", file=sys.stderr)
        return FAILED_RUNS_STATUS
    return 0


def cmd_report(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Rebuild the report from records; exit 1 when a run it covers failed."""
    from .preflight import require_folders
    from .report import build_report, load_meta, load_records

    results = _results(args, Path(args.experiment).stem)
    if not (results / "runs").is_dir():
        raise UserError(f"no records in {results / 'runs'}: run the sweep first (make reproduce)")
    require_folders({"--out": args.out})
    meta = load_meta(results)
    path = build_report(results, Path(args.out), selection_seed=meta.get("selection_seed", 0))
    print(f"wrote {path}")
    failed = [r for r in load_records(results, meta) if r.status == "failed"]
    if failed:
        print(
            f"error: {len(failed)} of the reported runs failed (the report counts them as "
            "excluded); rerun the sweep to retry them",
            file=sys.stderr,
        )
        return FAILED_RUNS_STATUS
    return 0


def cmd_pipeline(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Measure the input pipeline."""
    from .data import ensure_dataset
    from .pipeline import measure

    ensure_dataset("mnist", args.data_root, download=args.download)
    result = measure(args.data_root)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text if not args.out else f"wrote {args.out}: ratio {result['ratio']:.2f}")
    return 0


def cmd_reproduce(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]
) -> int:
    """Sweep, pipeline timing (real data), report; no report when a run failed (exit 1)."""
    from .pipeline import measure
    from .report import build_report
    from .sweep import failed_runs

    exp = _experiment(args)
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
    path = build_report(results, Path(args.out), selection_seed=exp.selection_seed)
    print(f"wrote {path}")
    return 0


def cmd_study(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Run the approximation study and write STUDY.md, study.csv and figures."""
    from .data import ensure_dataset
    from .preflight import require_folders
    from .study import QUICK, StudyConfig, run_study
    from .study_report import write_study

    require_folders({"--out": args.out})
    if not args.synthetic:
        for name in ("mnist", "fmnist"):
            ensure_dataset(name, args.data_root, download=args.download)
    sizes = QUICK if args.quick else {}
    cfg = StudyConfig(
        data="synthetic" if args.synthetic else "real",
        root=args.data_root,
        results=args.results,
        **sizes,
    )
    study = run_study(cfg)
    print(f"wrote {write_study(study, Path(args.out), args.results)}")
    return 0


def cmd_experiments(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]
) -> int:
    """List built-in experiments with their descriptions."""
    from .sweep import builtin_experiments, load_experiment

    for name in builtin_experiments():
        exp = load_experiment(name)
        print(f"{name:>10}: {exp.description.strip().splitlines()[0] if exp.description else ''}")
    return 0
