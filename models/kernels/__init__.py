"""Bit-packed XNOR/popcount kernels for the binary convolutions (CPU)."""

from __future__ import annotations

from torch import nn


def available() -> bool:
    return False


def unavailable_reason() -> str:
    return "the bitpacked extension is not built yet"


def to_bitpacked(net: nn.Module) -> nn.Module:
    raise NotImplementedError(unavailable_reason())
