"""Entry point of the ``bbcu`` console script."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module defines ``register(subparsers)``; the handler it sets returns an exit code.
COMMAND_MODULES = ("cli.restore", "cli.catalog", "cli.train", "cli.evaluate", "cli.service")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bbcu", description="BBCU binarized image restoration")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # a command group not present in this checkout
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
