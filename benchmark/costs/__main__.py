"""``python -m benchmark.costs --child SPEC``: internal, one fit's extra peak memory, fresh process.

Started by ``child.measure_in_child`` (one child per row of a timing run on a CPU); prints one
JSON line with the measurement. Users run ``python -m benchmark timing`` instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..data import DataNotFoundError
from .child import ChildSpec, run_child
from .measure import SetupError


def child_main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--child SPEC``, measure, print one JSON line; always exits 0 (the reason is data)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.costs",
        description="Internal: measure one fit's extra peak memory in a fresh process. "
        "Use `python -m benchmark timing` instead.",
    )
    parser.add_argument("--child", required=True, help="JSON ChildSpec")
    args = parser.parse_args(argv)
    spec = ChildSpec(**json.loads(args.child))
    try:
        result = run_child(spec)
    except (DataNotFoundError, SetupError) as err:
        result = {"extra_bytes": None, "reason": str(err)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
