"""Full fp32 for cuDNN convolutions while the engine runs, whatever the process-wide settings.

cuDNN may compute fp32 convolutions with TF32 inputs (10-bit mantissa); PyTorch allows it by
default, and then the engine's float convolutions on a GPU differ from the CPU engine by several
8-bit levels. ``ieee_fp32()`` turns TF32 off for cuDNN convolutions inside its block and restores
the caller's settings afterwards. The settings are process-wide, so nested and concurrent blocks
(two models in two threads) share one reference count: the first to enter saves them, the last to
leave restores them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# (backend, op) keys of PyTorch's per-operation fp32 precision settings (PyTorch >= 2.9)
_CONV = ("cuda", "conv")
_RNN = ("cuda", "rnn")


def _has_op_settings() -> bool:
    return hasattr(torch._C, "_get_fp32_precision_getter")


def _save() -> tuple[object, ...]:
    legacy: bool | None
    try:
        legacy = bool(torch._C._get_cudnn_allow_tf32())
    except RuntimeError:  # the caller mixed the legacy and per-operation settings: leave legacy alone
        legacy = None
    if not _has_op_settings():
        return (legacy,)
    return (legacy, torch._C._get_fp32_precision_getter(*_CONV),
            torch._C._get_fp32_precision_getter(*_RNN))


def _set_ieee() -> None:
    # the legacy switch first (on new PyTorch it resets the per-op values), then conv and rnn alike
    # so that the legacy getter stays consistent and does not raise while we are inside
    torch._C._set_cudnn_allow_tf32(False)
    if _has_op_settings():
        torch._C._set_fp32_precision_setter(*_CONV, "ieee")
        torch._C._set_fp32_precision_setter(*_RNN, "ieee")


def _restore(saved: tuple[object, ...]) -> None:
    legacy = saved[0]
    if legacy is not None:
        torch._C._set_cudnn_allow_tf32(bool(legacy))
    if len(saved) == 3:
        torch._C._set_fp32_precision_setter(*_CONV, str(saved[1]))
        torch._C._set_fp32_precision_setter(*_RNN, str(saved[2]))


class _Guard:
    """Reference-counted save / set / restore of the cuDNN fp32 settings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: tuple[object, ...] = ()

    def enter(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._saved = _save()
                _set_ieee()
            self._depth += 1

    def leave(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                _restore(self._saved)


_GUARD = _Guard()  # one per process, like the settings it guards


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """Inside this block cuDNN convolutions run in full fp32 (no TF32)."""
    _GUARD.enter()
    try:
        yield
    finally:
        _GUARD.leave()


def conv_allows_tf32() -> bool:
    """Whether a cuDNN fp32 convolution issued now may use TF32 (for tests and diagnostics)."""
    if _has_op_settings():
        return str(torch._C._get_fp32_precision_getter(*_CONV)) == "tf32"
    return bool(torch._C._get_cudnn_allow_tf32())
