"""What every command shares: the one-line-error parser, value types, common flags, display."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import provenance
from ..errors import USER_ERROR_STATUS, one_line


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, ``error: ...``, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: PROG: message (see PROG --help)`` and exit 2."""
        print(f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def jobs_arg(text: str) -> int | str:
    """An argparse type: ``auto`` (one run per available core) or an integer >= 1."""
    return "auto" if text == "auto" else positive_int(text)


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


def sizes(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated input counts, each >= 1."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected comma-separated input counts, e.g. 1000,10000")
    return tuple(positive_int(p) for p in parts)


def estimator_names(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated estimator names, each one of ``estimators.names()``."""
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


def add_data_args(p: argparse.ArgumentParser) -> None:
    """``--data-root`` and ``--download``."""
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
        type=positive_int,
        default=None,
        help="torch.set_num_threads (default: torch's default, e.g. from OMP_NUM_THREADS)",
    )
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"measure extra peak memory ({memory_how}; default: on)",
    )


PLACEHOLDERS = ("$" + provenance.DATA_ROOT_ENV, "<data root>")
"""What ``provenance.redact_argv`` puts in place of an absolute data root (shown unquoted)."""


def command(argv: Sequence[str]) -> str:
    """The command line as reports show it (an absolute ``--data-root`` not spelled out)."""
    parts = ["python", "-m", "benchmark", *provenance.redact_argv(list(argv))]
    return " ".join(
        a if a in PLACEHOLDERS or a.startswith(provenance.DATA_ROOT_FLAG + "=") else shlex.quote(a)
        for a in parts
    )
