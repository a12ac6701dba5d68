"""Bit-packed XNOR/popcount kernels for the binary convolutions (CPU).

The C extension ``models.kernels._bitpacked`` is built from ``csrc/bitpacked.c`` by
``pip install -e .`` / ``make install`` when a C compiler is present. Without it the engine runs
the float path (``model.info.backend == 'float'``) and ``unavailable_reason()`` says why.

``BBCU_KERNEL_ISA`` (one of ``ISAS``: ``scalar``, ``avx2``, ``avx512`` or ``amx``) forces a conv core; by
default the fastest one the CPU supports is chosen at import: AMX (exact int8 tile products of the signs)
where the CPU has it and Linux grants the tiles, else AVX-512 where the CPU has VPOPCNTDQ, then AVX2
(docs/kernels.md).
"""

from __future__ import annotations

import importlib.util
import os

from torch import nn

_reason: str | None = None
_ext = None
if importlib.util.find_spec("models.kernels._bitpacked") is None:
    _reason = ("the C extension models.kernels._bitpacked is not built (no C compiler at install time?); "
               "build it with `pip install -e .` or `python setup.py build_ext --inplace`")
else:
    try:
        from models.kernels import _bitpacked as _ext  # type: ignore[attr-defined,no-redef]
    except ImportError as e:  # built for another interpreter or platform
        _reason = f"the C extension models.kernels._bitpacked does not load: {e}"

if _ext is not None and os.environ.get("BBCU_KERNEL_ISA"):
    _ext.set_isa(os.environ["BBCU_KERNEL_ISA"])


# the conv cores, each usable where the CPU has every feature of the ones before it
ISAS = ("scalar", "avx2", "avx512", "amx")
# the cores that run the upsampler's wavefront (``pipe``); with the scalar one it goes layer by layer
PIPE_ISAS = ISAS[ISAS.index("avx2"):]


def available() -> bool:
    return _ext is not None


def unavailable_reason() -> str:
    return _reason or ""


def isa() -> str:
    """The conv core in use (one of ``ISAS``); '' when unavailable."""
    return _ext.isa()[0] if _ext is not None else ""


def supported_isas() -> tuple[str, ...]:
    """The conv cores this CPU can run, in the order of ``ISAS``; () when unavailable."""
    if _ext is None:
        return ()
    return ISAS[: ISAS.index(_ext.isa()[1]) + 1]


def set_isa(name: str) -> None:
    """Select the conv core (one of ``ISAS``); raises ValueError if the CPU lacks it."""
    if _ext is None:
        raise RuntimeError(unavailable_reason())
    _ext.set_isa(name)


def to_bitpacked(net: nn.Module) -> nn.Module:
    """Replace the deploy units of a deploy-form network by bit-packed units (in place)."""
    if _ext is None:
        raise RuntimeError(unavailable_reason())
    from models.kernels.bitpacked import convert

    return convert(net)
