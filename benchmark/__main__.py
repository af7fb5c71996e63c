"""``python -m benchmark``: the ewc-bench command line (see ``benchmark.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m benchmark"))
