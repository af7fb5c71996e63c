"""Command line: ``python -m benchmark COMMAND`` (also installed as ``ewc-bench``).

``main`` runs a command and turns what can go wrong into exit statuses: a user error (bad value,
missing or corrupt file, unwritable folder, unknown name, absent device, folder in use) is one
line ``error: ...`` and status 2, without a traceback (``--debug`` shows it); a sweep whose
selected or test runs failed exits 1; Ctrl-C or SIGTERM exits 130 after saying how to resume.

One module per command family: ``runs`` (run, sweep, reproduce, report, experiments), ``costs``
(timing, scaling, pipeline), ``study``; ``common`` holds the parser, value types and shared flags.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import USER_ERROR_STATUS, UserError, one_line
from .checks import add_grouped_parser, add_threads_parser
from .common import Parser, command
from .costs import add_pipeline_parser, add_scaling_parser, add_timing_parser
from .runs import add_report_parsers, add_run_parser, add_sweep_parsers
from .study import add_study_parser

INTERRUPTED_STATUS = 130


DESCRIPTION = """\
ewc-bench: a benchmark of Fisher/curvature estimators for Elastic Weight Consolidation.

Commands:
  run          train one configuration (every setting is a flag) and print its accuracy matrix
  sweep        run an experiment (TOML): lambda chosen on the selection seeds' validation split,
               then the test seeds; resumable
  report       rebuild reports/ (REPORT.md, runs.csv, figures) from stored records alone
  threads      rerun one group's test runs with another torch thread count and compare
  grouped      rerun one group's test runs alone and stacked (--group-size) and compare
  pipeline     time one epoch: the tutorial's DataLoader + ToTensor vs in-memory tensors
  reproduce    sweep + pipeline + report (what `make reproduce` runs)
  experiments  list the built-in experiments
  study        how close each Fisher approximation is to the exact Fisher -> OUT/STUDY.md
  timing       time every estimator's fit on the tutorial network (784-100-100-10 MLP with
               BatchNorm) on the first N MNIST training inputs, against two references measured
               in the same run (the floor: one batched forward + backward; the naive per-input
               loop), with each fit's extra peak memory (fresh subprocess) and the EWC penalty's
               cost per training step; writes OUT/timing.json and OUT/timing.md.
  scaling      fit time and memory vs N, width, depth and classes; penalty cost per step vs past
               tasks (separate vs online); where the dense Fisher stops fitting; the time split
               of a sweep's runs; writes OUT/scaling.json, OUT/scaling.md and figures.

Run `python -m benchmark COMMAND --help` for a command's options."""


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
    add_run_parser(sub)
    add_sweep_parsers(sub)
    add_report_parsers(sub)
    add_threads_parser(sub)
    add_grouped_parser(sub)
    add_pipeline_parser(sub)
    add_study_parser(sub)
    add_timing_parser(sub)
    add_scaling_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        return args.func(args, args.subparser, argv)
    except BrokenPipeError:  # e.g. `... --dry-run | head`: the reader has gone, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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


__all__ = ["build_parser", "main"]
