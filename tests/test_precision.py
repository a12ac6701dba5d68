"""``models.precision.ieee_fp32``: TF32 off for cuDNN convolutions inside, the caller's settings back
after, however blocks nest or overlap across threads. The settings are process-wide flags that
exist without a GPU, so this runs on the CPU; ``tests/test_cuda.py`` checks their effect on outputs."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from models.precision import conv_allows_tf32, ieee_fp32

PER_OP = hasattr(torch.backends.cudnn, "conv")  # PyTorch >= 2.9


@pytest.fixture
def tf32_allowed() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def test_nested_blocks_restore_the_legacy_setting(tf32_allowed: None) -> None:
    assert conv_allows_tf32()
    with ieee_fp32():
        assert not conv_allows_tf32() and not torch.backends.cudnn.allow_tf32
        with ieee_fp32():
            assert not conv_allows_tf32()
        assert not conv_allows_tf32()  # the inner block leaves the outer one's setting
    assert conv_allows_tf32() and torch.backends.cudnn.allow_tf32


@pytest.mark.skipif(not PER_OP, reason="PyTorch < 2.9 has no per-operation precision settings")
def test_per_operation_setting_is_overridden_and_restored() -> None:
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "tf32"
    try:
        with ieee_fp32():
            assert conv.fp32_precision == "ieee" and not conv_allows_tf32()
        assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision = saved


def test_overlapping_blocks_in_threads_restore_once(tf32_allowed: None) -> None:
    # A enters, B enters, A leaves (B still inside: TF32 must stay off), B leaves (restored)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def a() -> None:
        with ieee_fp32():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        with ieee_fp32():
            b_in.set()
            a_out.wait(10)
            seen["b after a left"] = conv_allows_tf32()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"b after a left": False}
    assert conv_allows_tf32() and torch.backends.cudnn.allow_tf32
