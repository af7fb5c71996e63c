"""Command line: ``python -m benchmark COMMAND`` (also installed as ``ewc-bench``).

``main`` runs a command and turns what can go wrong into exit statuses: a user error (bad value,
missing or corrupt file, unwritable folder, unknown name, absent device, folder in use) is one
line ``error: ...`` and status 2, without a traceback (``--debug`` shows it); a sweep whose
selected or test runs failed exits 1; Ctrl-C or SIGTERM exits 130 after saying how to resume.
The commands are in ``benchmark.commands`` (run, sweep, report, pipeline, reproduce, study,
experiments) and here (timing, scaling).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import provenance
from .errors import USER_ERROR_STATUS, UserError, one_line
from .preflight import check_folders, require_folders

INTERRUPTED_STATUS = 130

DESCRIPTION = """\
ewc-bench: a benchmark of Fisher/curvature estimators for Elastic Weight Consolidation.

Commands:
  run          train one configuration (every setting is a flag) and print its accuracy matrix
  sweep        run an experiment (TOML): lambda chosen on validation, then all seeds; resumable
  report       rebuild reports/ (REPORT.md, runs.csv, figures) from stored records alone
  pipeline     time one epoch: the tutorial's DataLoader + ToTensor vs in-memory tensors
  reproduce    sweep + pipeline + report (what `make reproduce` runs)
  experiments  list the built-in experiments
  timing   time every estimator's fit on the tutorial network (784-100-100-10 MLP with
           BatchNorm) on the first N MNIST training inputs, against two references measured in
           the same run (the floor: one batched forward + backward; the naive per-input loop),
           with each fit's extra peak memory (fresh subprocess) and the EWC penalty's cost per
           training step; writes OUT/timing.json and OUT/timing.md.
  scaling  fit time and memory vs N, width, depth and classes; penalty cost per step vs past
           tasks (separate vs online); where the dense Fisher stops fitting; the time split of
           a sweep's runs; writes OUT/scaling.json, OUT/scaling.md and figures.

Run `python -m benchmark COMMAND --help` for a command's options."""

TIMING_DESCRIPTION = """\
Time est.fit(model, x, y) for every estimator name on the first N MNIST training inputs
(tutorial-mlp, float32, seeded init, BatchNorm statistics from 500 training inputs, eval mode):
one warm-up, then the median of --repeats calls. References measured in the same run: the floor
(one batched forward + backward of the mean cross-entropy over the same inputs) and the naive
loop (one forward + backward per input, squared gradients accumulated; on at most 1,000 inputs,
scaled linearly). Extra peak memory: one fit in a fresh subprocess, VmHWM after minus VmRSS
before (Linux /proc; torch.cuda.max_memory_allocated on CUDA). Penalty cost: one Adam step at
batch 100 with and without 0.5 * lam * curv.quadratic(theta - theta_old), for identity,
diag-exact, kfac-exact and full-mc (factor).

Estimators that refuse (FisherMemoryError: over the memory budget) or fail are reported as such
in the table; the run continues."""

TIMING_EPILOG = """\
examples:
  OMP_NUM_THREADS=2 python -m benchmark timing --data-root ../shared/data --out reports
  python -m benchmark timing --sizes 1000 --names diag-exact,kfac-exact --repeats 3
  python -m benchmark timing --quick --no-memory        # a smoke run in seconds"""


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, ``error: ...``, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: PROG: message (see PROG --help)`` and exit 2."""
        print(f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected comma-separated input counts, e.g. 1000,10000")
    return tuple(_positive_int(p) for p in parts)


def _names(text: str) -> tuple[str, ...]:
    import estimators

    parts = [p.strip() for p in text.split(",") if p.strip()]
    valid = estimators.names()
    unknown = [p for p in parts if p not in valid]
    if not parts:
        raise argparse.ArgumentTypeError(
            f"no estimator names given; valid names: {', '.join(valid)}"
        )
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown estimator name(s) {', '.join(map(repr, unknown))}; "
            f"valid names: {', '.join(valid)}"
        )
    return tuple(parts)


def add_machine_args(p: argparse.ArgumentParser, memory_how: str) -> None:
    """``--device``, ``--threads`` and ``--memory``: shared by the timing and scaling commands."""
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run (default auto: cuda when available)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch.set_num_threads (default: torch's default, e.g. from OMP_NUM_THREADS)",
    )
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"measure extra peak memory ({memory_how}; default: on)",
    )


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
        type=_sizes,
        default=None,
        metavar="N[,N...]",
        help="input counts, one table each (default 1000,10000; 200 with --quick)",
    )
    p.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help="timed calls per estimator after one warm-up; the median is reported "
        "(default 5; 1 with --quick; fewer for estimators whose warm-up is slow)",
    )
    p.add_argument(
        "--names",
        type=_names,
        default=None,
        metavar="NAME[,NAME...]",
        help="estimators to time (default: all)",
    )
    p.add_argument(
        "--penalty-steps",
        type=_positive_int,
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
        "benchmark.scaling for what is measured and how.",
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
        "--repeats", type=_positive_int, default=None, help="timed rounds per point (default 3)"
    )
    add_machine_args(p, "one more call per row, in process")
    p.add_argument("--quick", action="store_true", help="tiny configuration (tests, smoke runs)")
    p.set_defaults(func=run_scaling_command, subparser=p)
    return p


def run_scaling_command(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]
) -> int:
    """Run the scaling study; a bad configuration becomes an argparse-style error."""
    from pathlib import Path

    from . import scaling, scaling_report
    from .timing import SetupError, resolve_device

    require_folders({"--out": args.out})
    try:
        overrides = dict(
            device=resolve_device(args.device),
            threads=args.threads,
            memory=args.memory,
            results=args.results,
            command=command(argv),
        )
        if args.repeats is not None:
            overrides["repeats"] = args.repeats
        config = (
            scaling.quick_config(**overrides) if args.quick else scaling.ScalingConfig(**overrides)
        )
        record = scaling.run_scaling(config)
    except (scaling.ScalingError, SetupError) as err:
        parser.error(str(err))
    print(f"wrote {scaling_report.write_reports(record, Path(args.out))}")
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with its subcommands."""
    parser = Parser(
        prog=prog,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of one line (also after the command)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    from .commands import add_run_parser, add_sweep_parsers

    add_run_parser(sub)
    add_sweep_parsers(sub)
    add_timing_parser(sub)
    add_scaling_parser(sub)
    return parser


def run_timing_command(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]
) -> int:
    """Run the timing command; setup problems become argparse-style errors."""
    from . import timing

    preflight_timing(args)
    try:
        config = timing.make_config(
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
        record = timing.run_timing(config)
    except timing.SetupError as err:
        parser.error(str(err))
    json_path, md_path = timing.write_reports(record, config.out)
    print(f"wrote {json_path} and {md_path}")
    return 0


def command(argv: Sequence[str]) -> str:
    """The command line as reports show it (an absolute ``--data-root`` not spelled out)."""
    return shlex.join(["python", "-m", "benchmark", *provenance.redact_argv(list(argv))])


def preflight_timing(args: argparse.Namespace) -> None:
    """The timing command's preflight: the output folder, and MNIST unless synthetic."""
    from .data import DataError, ensure_dataset
    from .preflight import PreflightError

    problems = check_folders({"--out": args.out})
    if not args.synthetic:
        try:
            ensure_dataset("mnist", args.data_root)
        except DataError as err:
            problems.append(str(err))
    if problems:
        raise PreflightError(problems)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        return args.func(args, args.subparser, argv)
    except KeyboardInterrupt as err:
        if debug:
            raise
        print(f"\ninterrupted: {err or 'stopped'}", file=sys.stderr)
        if getattr(args, "command", "") in ("sweep", "reproduce", "run"):
            print(
                "finished runs are kept; run the same command again to resume "
                f"(nothing finished is redone): {command(argv)}",
                file=sys.stderr,
            )
        return INTERRUPTED_STATUS
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        if debug:
            raise
        problems = getattr(err, "problems", None) or [str(err)]
        for problem in problems:
            print(f"error: {one_line(problem)}", file=sys.stderr)
        return USER_ERROR_STATUS
    except Exception as err:
        if debug:
            raise
        print(
            f"error: unexpected {type(err).__name__}: {one_line(err)} "
            "(rerun with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
