"""The float upsampler in bands of rows (models.bands): bitwise what the layers compute one at a time."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from models import bands, kernels
from models.blocks import shuffle_lrelu
from models.config import sr_config
from models.engine import from_network
from tests.factories import random_net


def _unbanded(net: nn.Module, x: Tensor, monkeypatch: pytest.MonkeyPatch) -> Tensor:
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(bands, "can_run", lambda *a, **k: False)
        return net(x)


def _equal(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))


def _record_windows(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(id of the convolution, elements of the window) of every banded convolution call from now on."""
    calls: list[tuple[int, int]] = []
    real = bands.RowConv.__call__

    def call(self: bands.RowConv, window: Tensor, top: bool, bottom: bool) -> Tensor:
        calls.append((id(self.conv), window.numel()))
        return real(self, window, top, bottom)

    monkeypatch.setattr(bands.RowConv, "__call__", call)
    return calls


# (scale, width, height, band rows): widths of 64 and 48 force taller bands than asked for (every
# window must stay above ATen's oneDNN threshold); 320 is the shipped networks' input width at 320x240
CASES = [(4, 64, 37, r) for r in (1, 7, 8, 11, 17)] + [(2, 48, 29, r) for r in (1, 10, 13)] + [
    (3, 48, 26, r) for r in (1, 9)] + [(4, 320, 13, r) for r in (1, 2, 3, 5)]


@pytest.mark.parametrize("scale,w,h,rows", CASES)
def test_banded_upsampler_is_bitwise_the_layers_one_by_one(scale: int, w: int, h: int, rows: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A random BBCU-L network, unbanded vs banded at several band heights (some not dividing the
    height), as the deploy-form network in NHWC as the engine runs it."""
    cfg = sr_config(scale, "l", nf=64, depth=1)
    net = random_net(cfg, seed=scale + rows).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(rows)).contiguous(
        memory_format=torch.channels_last)
    ref = _unbanded(net, x, monkeypatch)
    monkeypatch.setattr(bands, "ROWS", rows)
    calls = _record_windows(monkeypatch)
    with torch.no_grad():
        out = net(x)
    assert _equal(out, ref), f"max diff {(out - ref).abs().max().item()}"
    assert out.is_contiguous(memory_format=torch.channels_last)
    per_conv: dict[int, int] = {}
    for conv, numel in calls:
        per_conv[conv] = per_conv.get(conv, 0) + 1
        assert numel > bands.ONEDNN_MIN_NUMEL  # every band's convolution takes the whole image's path
    assert len(per_conv) == len(net.steps) + 2 and min(per_conv.values()) >= 2  # banded, every stage


def test_engines_run_banded_and_stay_bitwise_equal(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = sr_config(4, "l", nf=64, depth=2)
    net = random_net(cfg, seed=5)
    x = torch.rand(1, 3, 40, 64, generator=torch.Generator().manual_seed(5))
    backends = ["float"] + (["bitpacked"] if kernels.available() else [])
    models = {b: from_network(net, cfg, backend=b) for b in backends}
    ref = {b: _unbanded(m.net, x.contiguous(memory_format=torch.channels_last), monkeypatch)
           for b, m in models.items()}
    monkeypatch.setattr(bands, "ROWS", 8)  # 40 rows: one band at the default size
    calls = _record_windows(monkeypatch)
    for b, m in models.items():
        out = m(x)
        assert _equal(out, ref[b].contiguous()), b
    assert calls
    if "bitpacked" in models:
        assert _equal(ref["float"], ref["bitpacked"])


def test_training_runs_the_layers_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """With gradients wanted (training), the plain layers run, and gradients reach the upsampler."""
    monkeypatch.setattr(bands, "ROWS", 8)
    cfg = sr_config(4, "l", nf=64, depth=1)
    net = random_net(cfg, seed=1).train()
    x = torch.rand(1, 3, 40, 64).contiguous(memory_format=torch.channels_last)
    calls = _record_windows(monkeypatch)
    net(x).square().mean().backward()
    assert not calls
    assert net.upconv1.weight.grad is not None and net.conv_last.weight.grad is not None
    with torch.no_grad():
        net(x)
    assert calls  # the same network under no_grad: banded


NHWC, NCHW = torch.channels_last, torch.contiguous_format


@pytest.mark.parametrize("n,layout,bf16", [(2, NHWC, False), (1, NCHW, False), (1, NHWC, True)])
def test_batches_nchw_and_bf16_run_whole(n: int, layout: torch.memory_format, bf16: bool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch, an NCHW network, bf16 autocast (not checked to be exact in bands): the layers whole."""
    net = random_net(sr_config(2, "l", nf=64, depth=1), seed=2).eval().to(memory_format=layout)
    monkeypatch.setattr(bands, "ROWS", 8)
    calls = _record_windows(monkeypatch)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net(torch.rand(n, 3, 40, 64).contiguous(memory_format=layout))
        assert not calls
        net.to(memory_format=torch.channels_last)(torch.rand(1, 3, 40, 64).contiguous(
            memory_format=torch.channels_last))
    assert calls  # the same network on one NHWC image in fp32: banded


def test_run_equals_the_stages_one_after_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generic stages (a shuffle, an activation, 16 channels): every window stays above the oneDNN
    threshold, waiting for more rows where the first band gives a stage too few."""
    g = torch.Generator().manual_seed(0)
    convs = [nn.Conv2d(16, 64, 3, 1, 1), nn.Conv2d(16, 16, 3, 1, 1), nn.Conv2d(16, 16, 3, 1, 1)]
    for c in convs:
        nn.init.normal_(c.weight, std=0.1, generator=g)
        c.to(memory_format=torch.channels_last).requires_grad_(False)
    lrelu = nn.LeakyReLU(0.2, inplace=True)
    x = torch.randn(1, 16, 61, 200, generator=g).contiguous(memory_format=torch.channels_last)
    ref = lrelu(convs[2](lrelu(convs[1](shuffle_lrelu(convs[0](x), 2, lrelu)))))

    def post(r: int) -> bands.Post:
        return lambda y, dest, row: shuffle_lrelu(y, r, lrelu, out=dest)

    stages = [bands.Stage(bands.RowConv(convs[0]), post(2), 16, 2),
              bands.Stage(bands.RowConv(convs[1]), post(1), 16),
              bands.Stage(bands.RowConv(convs[2]), post(1), 16)]
    for rows in (1, 2, 3, 7):
        monkeypatch.setattr(bands, "ROWS", rows)
        calls = _record_windows(monkeypatch)
        assert bands.can_run(stages, x)
        out = bands.run(stages, x, torch.empty_like(ref))
        assert _equal(out, ref), rows
        assert all(numel > bands.ONEDNN_MIN_NUMEL for _, numel in calls)
        assert len(calls) > 2 * len(stages)


@pytest.mark.parametrize("r,threads", [(1, None), (2, None), (2, 1), (3, None)])
def test_shuffle_lrelu_into_a_window_is_the_networks_step(r: int, threads: int | None) -> None:
    """Into rows of a larger NHWC buffer, as the bands write: bitwise the unbanded network's step,
    on any number of threads; by 1 the in-place activation."""
    y = torch.randn(1, 16 * r * r, 5, 7)
    y[0, :3, 0, 0] = torch.tensor([0.0, -0.0, float("nan")])
    y = y.contiguous(memory_format=torch.channels_last)
    buf = torch.zeros(1, 16, 5 * r + 3, 7 * r).contiguous(memory_format=torch.channels_last)
    lrelu = nn.LeakyReLU(0.1, inplace=True)
    shuffle_lrelu(y, r, lrelu, out=buf[:, :, 2:2 + 5 * r], threads=threads)
    out = buf[:, :, 2:2 + 5 * r]
    ref = lrelu(y.clone()) if r == 1 else shuffle_lrelu(y, r, lrelu)
    assert torch.equal(out.nan_to_num(3.0), ref.nan_to_num(3.0)) and torch.equal(out.signbit(), ref.signbit())
    assert not buf[:, :, :2].any() and not buf[:, :, -1].any()
