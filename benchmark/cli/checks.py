"""The checks that rerun one group of a sweep: ``threads`` and ``grouped``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .common import positive_int


def _group_arguments(p: argparse.ArgumentParser, section: str, method: str) -> None:
    """The results folder, data root and the group (section, method, bn) a check reruns."""
    p.add_argument("--results", default="results/default", help="the sweep's results folder")
    p.add_argument("--data-root", default=None, help="dataset root (see `run --help`)")
    p.add_argument("--section", default=section, help="report section of the group")
    p.add_argument("--method", default=method, help="method label of the group")
    p.add_argument("--bn", default=None, help="BatchNorm mode of the group (when it ran both)")


def _swept(args: argparse.Namespace) -> tuple[Path, tuple[int, ...]]:
    """The results folder (refused without records) and its sweep's selection seeds."""
    from ..outcomes import load_meta
    from ..selection import selection_seeds_of

    results = Path(args.results)
    if not (results / "runs").is_dir():
        raise UserError(f"no records in {results / 'runs'}: run the sweep first (make reproduce)")
    return results, tuple(selection_seeds_of(load_meta(results)))


def add_threads_parser(sub: argparse._SubParsersAction) -> None:
    """``threads``: how far another torch thread count moves one group's numbers."""
    from ..threads import DEFAULT_METHOD, DEFAULT_SECTION

    text = (
        "rerun the test runs of one group with another torch thread count (into "
        "<results>/threads-<k>/) and compare them with the sweep's; the report states the result"
    )
    p = sub.add_parser("threads", help=text, description=text)
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="thread count of the reruns (default: 2 if the group ran with 1, else 1)",
    )
    _group_arguments(p, DEFAULT_SECTION, DEFAULT_METHOD)
    p.set_defaults(func=cmd_threads, subparser=p)


def cmd_threads(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Rerun one group with ``--threads`` threads; print the comparison."""
    from ..threads import measure

    results, seeds = _swept(args)
    try:
        out = measure(
            results, seeds, args.threads, args.section, args.method, args.data_root, args.bn
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    print(
        f"{out['section']} {out['method']}: {out['identical']} of {out['n']} runs bitwise "
        f"identical with {out['threads_after']} threads; |Δ avg acc| median "
        f"{out['median_abs_diff']}, "
        f"max {out['max_abs_diff']}"
    )
    return 0


def add_grouped_parser(sub: argparse._SubParsersAction) -> None:
    """``grouped``: whether training runs together moves one group's numbers, and how fast."""
    from ..grouped_check import DEFAULT_METHOD, DEFAULT_SECTION, DEFAULT_SIZE

    text = (
        "rerun the test runs of one group alone and in stacks of --group-size (into "
        "<results>/grouped-<S>/), compare both with the sweep's records and time both; the "
        "report states the result"
    )
    p = sub.add_parser("grouped", help=text, description=text)
    p.add_argument(
        "--group-size",
        type=positive_int,
        default=DEFAULT_SIZE,
        help=f"runs per stack, at least 2 (default {DEFAULT_SIZE})",
    )
    _group_arguments(p, DEFAULT_SECTION, DEFAULT_METHOD)
    p.set_defaults(func=cmd_grouped, subparser=p)


def cmd_grouped(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Rerun one group alone and stacked; print the comparison."""
    from ..grouped_check import measure

    results, seeds = _swept(args)
    try:
        out = measure(
            results, seeds, args.group_size, args.section, args.method, args.data_root, args.bn
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    alone, grouped, timing = out["alone"], out["grouped"], out["timing"]
    speed = (
        f"; {timing['alone_seconds'] / timing['grouped_seconds']:.2f}x the runs per minute"
        if timing
        else ""
    )
    print(
        f"{grouped['section']} {grouped['method']}: alone {alone['identical']} of {alone['n']} "
        f"bitwise identical to the sweep; stacks of {out['size']} {grouped['identical']} of "
        f"{grouped['n']}, |Δ avg acc| median {grouped['median_abs_diff']}, max "
        f"{grouped['max_abs_diff']}{speed}"
    )
    return 0
