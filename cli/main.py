"""Entry point of the ``bbcu`` console script."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Each module defines ``register(subparsers)``; the handler it sets returns an exit code.
COMMAND_MODULES = ("cli.restore", "cli.catalog", "cli.train", "cli.evaluate", "cli.service")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bbcu", description="BBCU binarized image restoration")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    missing = []
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # a command group not present in this checkout
            # e.g. the service commands on a GPU box that has torch but not fastapi/celery/redis:
            # training and evaluation must still run there
            missing.append(f"{name.removeprefix('cli.')} (needs {e.name})")
            continue
        module.register(sub)
    if missing:
        parser.epilog = "not available in this environment: " + ", ".join(missing)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch loads (its allocator reads this once): transparent huge pages for large tensors.
    # The networks allocate output-size tensors on every call; first touching them cost 18% of a
    # BBCU-M x4 call with 4 KB pages (docs/kernels.md). Workers started by this CLI inherit it.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
