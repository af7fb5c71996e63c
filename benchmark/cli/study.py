"""The ``study`` command: the approximation study (``benchmark.study``) -> STUDY.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_data_args


def add_study_parser(sub: argparse._SubParsersAction) -> None:
    """The ``study`` subcommand's parser."""
    p = sub.add_parser(
        "study",
        help="how good is each Fisher approximation (full vs KFAC vs diagonal) -> OUT/STUDY.md",
        description="The approximation study: every estimator against the exact dense Fisher "
        "(a small MLP, and the default sweep's main network, the MLP 784-16-16-10, with the "
        "reference's own sampling noise measured on a disjoint draw), with convergence in N and "
        "mc samples, the batched estimator's bias on the tutorial network, and the sweep's "
        "forgetting beside the errors of the estimators it ran (same network, inputs and N).",
    )
    p.add_argument("--out", default="reports", help="output folder (default reports)")
    p.add_argument(
        "--results",
        default="results/default",
        help="harness results to link errors to forgetting (default results/default)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    p.add_argument("--synthetic", action="store_true", help="synthetic stand-in data, for tests")
    add_data_args(p)
    p.set_defaults(func=cmd_study, subparser=p)


def cmd_study(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Run the approximation study and write STUDY.md, study.csv and figures."""
    from ..data import ensure_dataset
    from ..preflight import require_folders
    from ..report import write_study
    from ..study import QUICK, StudyConfig, run_study

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
