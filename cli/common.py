"""Helpers shared by the command modules."""

from __future__ import annotations

import sys


def fail(message: str, code: int = 2) -> int:
    print(f"bbcu: error: {message}", file=sys.stderr)
    return code
