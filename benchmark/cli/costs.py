"""The cost commands: ``timing``, ``scaling`` and ``pipeline`` (``benchmark.costs``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..preflight import check_folders, require_folders
from .common import add_data_args, add_machine_args, command, positive_int, sizes

TIMING_DESCRIPTION = """\
Time est.fit(model, x, y) for every estimator name on the first N MNIST training inputs
(tutorial-mlp, float32, seeded init, BatchNorm statistics from 500 training inputs, eval mode):
one warm-up, then the median of --repeats calls. References measured in the same run: the floor
(one batched forward + backward of the mean cross-entropy over the same inputs) and the naive
loop (one forward + backward per input, squared gradients accumulated; on at most 1,000 inputs,
scaled linearly). Extra peak memory: one fit in a fresh subprocess, VmHWM after minus VmRSS
before (Linux /proc; torch.cuda.max_memory_allocated on CUDA). Penalty cost: one training step
at batch 100 (the harness's training.train_step) with and without the EWC penalty's closed-form
gradient lam F (theta - theta_old), added after the loss's backward (estimators.EWC), for
identity, diag-exact, kfac-exact and full-mc (factor).

Besides every estimator name, the variants of README's "Ablation options" get rows of their own,
labelled as method labels are without "ewc " (kfac-exact factors=a-diag, ..., kfac-exact
layers=hidden, kfac-exact layers=output, full-exact output_curvature=mean).

Estimators that refuse (FisherMemoryError: over the memory budget) or fail are reported as such
in the table; the run continues."""


TIMING_EPILOG = """\
examples:
  OMP_NUM_THREADS=2 python -m benchmark timing --data-root $EWC_BENCH_DATA --out reports
  python -m benchmark timing --sizes 1000 --names diag-exact,kfac-exact --repeats 3
  python -m benchmark timing --sizes 1000 --names "kfac-exact,kfac-exact factors=a-diag"
  python -m benchmark timing --quick --no-memory        # a smoke run in seconds"""


def timing_names(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated timing rows, estimator names or variant labels."""
    from ..costs.measure import SetupError
    from ..costs.variants import check_names, split_names

    try:
        return check_names(split_names(text))
    except SetupError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_timing_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``timing`` subcommand's parser."""
    p = sub.add_parser(
        "timing",
        help="time every estimator's fit, peak memory and penalty cost -> OUT/timing.md",
        description=TIMING_DESCRIPTION,
        epilog=TIMING_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="datasets root in torchvision layout (ROOT/MNIST/raw); "
        "default $EWC_BENCH_DATA, else ./data",
    )
    p.add_argument("--out", default="reports", help="output folder (default: reports)")
    p.add_argument(
        "--sizes",
        type=sizes,
        default=None,
        metavar="N[,N...]",
        help="input counts, one table each (default 1000,10000; 200 with --quick)",
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        help="timed calls per estimator after one warm-up; the median is reported "
        "(default 5; 1 with --quick; fewer for estimators whose warm-up is slow)",
    )
    p.add_argument(
        "--names",
        type=timing_names,
        default=None,
        metavar="NAME[,NAME...]",
        help="rows to time: estimator names or variant labels such as 'kfac-exact "
        "factors=a-diag' (quote them; default: every name and the ablation variants)",
    )
    p.add_argument(
        "--penalty-steps",
        type=positive_int,
        default=None,
        help="timed training steps per variant for the penalty cost (default 200; 10 with --quick)",
    )
    add_machine_args(p, "one subprocess per row on CPU")
    p.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time BackPACK and nngeometry where installed (pip install -e '.[compare]'), "
        "on the network without BatchNorm, and check their diagonals against ours (default: on)",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny run for tests: N=200, 1 repeat, 10 steps"
    )
    p.add_argument("--synthetic", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_timing_command, subparser=p)
    return p


def add_scaling_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``scaling`` subcommand's parser."""
    p = sub.add_parser(
        "scaling",
        help="cost vs N, width, depth, classes and past tasks -> OUT/scaling.md",
        description="Scaling study on seeded synthetic inputs (no dataset needed); see "
        "benchmark.costs.scaling for what is measured and how.",
        epilog="examples:\n  python -m benchmark scaling --results results/default --out reports\n"
        "  python -m benchmark scaling --quick --out /tmp/scaling   # seconds",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="reports", help="output folder (default: reports)")
    p.add_argument(
        "--results",
        default=None,
        help="a sweep's results folder, for the time split of whole runs (default: none)",
    )
    p.add_argument(
        "--repeats", type=positive_int, default=None, help="timed rounds per point (default 3)"
    )
    add_machine_args(p, "one more call per row, in process")
    p.add_argument("--quick", action="store_true", help="tiny configuration (tests, smoke runs)")
    p.add_argument(
        "--executors-only",
        action="store_true",
        help="measure only runs per minute through the process pool and Dask (needs "
        "'.[distributed]') and put them into OUT/scaling.json, which must exist; then rewrite "
        "OUT/scaling.md (the other sections keep their numbers)",
    )
    p.add_argument(
        "--time-split-only",
        action="store_true",
        help="recompute only the time split of whole runs from --results' records (no "
        "measurement) into OUT/scaling.json, which must exist; then rewrite OUT/scaling.md",
    )
    p.add_argument(
        "--representation-only",
        action="store_true",
        help="measure only the full Fisher dense against its factor (fit, bytes, penalty per "
        "step, seconds per run; with --quick: a tiny version) and put it into OUT/scaling.json, "
        "which must exist; then rewrite OUT/scaling.md",
    )
    p.set_defaults(func=run_scaling_command, subparser=p)
    return p


def add_pipeline_parser(sub: argparse._SubParsersAction) -> None:
    """The ``pipeline`` subcommand's parser."""
    p = sub.add_parser(
        "pipeline", help="time one epoch: tutorial DataLoader+ToTensor vs in-memory tensors"
    )
    p.add_argument("--out", default=None, help="write the JSON here (default: print it)")
    add_data_args(p)
    p.set_defaults(func=cmd_pipeline, subparser=p)


def run_timing_command(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]
) -> int:
    """Run the timing command; a setup problem is a ``UserError`` (one line, exit 2)."""
    from .. import costs
    from ..report import write_timing_reports

    preflight_timing(args)
    config = costs.make_config(
        sizes=args.sizes,
        repeats=args.repeats,
        names=args.names,
        device=args.device,
        threads=args.threads,
        data_root=args.data_root,
        out=args.out,
        memory=args.memory,
        penalty_steps=args.penalty_steps,
        quick=args.quick,
        synthetic=args.synthetic,
        compare=args.compare,
        command=command(argv),
    )
    record = costs.run_timing(config)  # a SetupError is a UserError: one line, exit 2 (main)
    json_path, md_path = write_timing_reports(record, config.out)
    print(f"wrote {json_path} and {md_path}")
    return 0


def preflight_timing(args: argparse.Namespace) -> None:
    """The timing command's preflight: the output folder, and MNIST unless synthetic."""
    from ..data import DataError, ensure_dataset
    from ..preflight import PreflightError

    problems = check_folders({"--out": args.out})
    if not args.synthetic:
        try:
            ensure_dataset("mnist", args.data_root)
        except DataError as err:
            problems.append(str(err))
    if problems:
        raise PreflightError(problems)


def run_scaling_command(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]
) -> int:
    """Run the scaling study; a bad configuration becomes an argparse-style error."""
    from .. import costs
    from ..device import resolve_device
    from ..report import scaling as scaling_report

    require_folders({"--out": args.out})
    if any(getattr(args, name) for name in PARTIAL_FLAGS):
        return run_partial(args, argv)
    try:
        overrides = dict(
            device=str(resolve_device(args.device)),
            threads=args.threads,
            memory=args.memory,
            results=args.results,
            command=command(argv),
        )
        if args.repeats is not None:
            overrides["repeats"] = args.repeats
        config = costs.quick_config(**overrides) if args.quick else costs.ScalingConfig(**overrides)
        record = costs.run_scaling(config)
    except costs.ScalingError as err:
        parser.error(str(err))
    print(f"wrote {scaling_report.write_reports(record, Path(args.out))}")
    return 0


PARTIAL_FLAGS = ("executors_only", "time_split_only", "representation_only")
"""``scaling``'s flags that redo one part of an existing scaling.json (``run_partial``)."""


def run_partial(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """One part of scaling.json redone, the others kept; then scaling.md rewritten.

    ``--executors-only`` measures the executors table; ``--time-split-only`` recomputes the time
    split of whole runs from ``--results``' records (no measurement); ``--representation-only``
    measures the full Fisher dense against its factor (``representation_only``).
    """
    from ..costs.time_split import time_split
    from ..errors import UserError
    from ..report import scaling as scaling_report

    flags = [f"--{name.replace('_', '-')}" for name in PARTIAL_FLAGS if getattr(args, name)]
    if len(flags) > 1:
        raise UserError(f"give one of {', '.join(flags)} at a time")
    flag = flags[0]
    path = Path(args.out) / "scaling.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{flag} updates {path}: {err}; run `make scaling` first") from None
    if args.time_split_only:
        if not args.results:
            raise UserError("--time-split-only needs --results (the sweep's results folder)")
        record["time_split"] = time_split(args.results)
    elif args.representation_only:
        record["representation"] = representation_only(args, argv)
    else:
        from ..costs.executors import ExecutorsConfig, measure_executors
        from ..distributed import require_distributed

        require_distributed()
        record["executors"] = measure_executors(ExecutorsConfig(), args.results, command(argv))
    print(f"wrote {scaling_report.write_reports(record, Path(args.out))}")
    return 0


def representation_only(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """``scaling --representation-only``: the study alone, at ``--threads`` and ``--repeats``.

    Repeats default to the scaling study's (``quick_config``'s with ``--quick``, which also
    measures the tiny network of ``quick_representation``).
    """
    import torch

    from .. import costs
    from ..costs.measure import Progress, load_average, warn_if_busy
    from ..costs.scaling_representation import (
        RepresentationConfig,
        measure_representation,
        quick_representation,
        representation_ticks,
    )
    from ..device import resolve_device

    warn_if_busy(load_average())
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = quick_representation() if args.quick else RepresentationConfig()
    repeats = args.repeats or (costs.quick_config() if args.quick else costs.ScalingConfig).repeats
    progress = Progress(representation_ticks(config), "representation")
    try:
        return measure_representation(
            config, repeats, str(resolve_device(args.device)), command(argv), progress.tick
        )
    finally:
        progress.close()


def cmd_pipeline(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Measure the input pipeline."""
    from ..costs.pipeline import measure
    from ..data import ensure_dataset

    ensure_dataset("mnist", args.data_root, download=args.download)
    result = measure(args.data_root)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text if not args.out else f"wrote {args.out}: ratio {result['ratio']:.2f}")
    return 0
