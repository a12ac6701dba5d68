"""The engine on CUDA equals the CPU engine (every variant, shipped and random weights, every GPU
backend), whatever the process-wide TF32 settings; the fused units are bitwise the float ones.

Skipped without CUDA. Imports only torch and ``models`` (it runs on a bare GPU machine with
``pytest --noconftest``), so it uses no service fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from models import catalog
from models.engine import from_network, load_model
from models.precision import conv_allows_tf32
from tests.factories import deploy_unit, random_net, small_configs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TOL = 1e-6  # outputs in 0..1; measured differences are ~1e-7 (rounding order of float convs)
def _triton() -> bool:
    from models.kernels import fused

    return fused.available()


@pytest.fixture
def tf32_everywhere() -> Iterator[None]:
    """The settings most likely to break exactness: TF32 allowed by both APIs."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _image(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(seed))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu() - b.cpu()).abs().max())


SHIPPED = [e.name for e in catalog.entries()]
RANDOM = list(small_configs())
needs_triton = pytest.mark.skipif(not _triton(), reason="Triton is not installed")


def _check_shipped(name: str, backends: list[str]) -> None:
    cpu = load_model(name)
    x = _image(cpu.config.in_nc, 40, 36, seed=1)
    expect = cpu(x)
    for backend in backends:
        got = load_model(name, device="cuda", backend=backend)(x)
        assert got.shape == expect.shape
        d = _max_diff(got, expect)
        assert d <= TOL, f"{name} {backend}: max diff {d:.2e}"
    assert conv_allows_tf32()  # the caller's setting is back


def _check_random(name: str, backends: list[str]) -> dict[str, torch.Tensor]:
    cfg = small_configs(nf=32)[name]
    net = random_net(cfg, seed=2)
    x = _image(cfg.in_nc, 33, 29, seed=2)
    expect = from_network(net, cfg)(x)
    outs = {}
    for backend in backends:
        outs[backend] = from_network(net, cfg, device="cuda", backend=backend)(x)
        d = _max_diff(outs[backend], expect)
        assert d <= TOL, f"{name} {backend}: max diff {d:.2e}"
    return outs


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"),
                    reason="PyTorch < 2.9 has no per-operation precision settings")
def test_per_operation_tf32_setting_is_overridden() -> None:
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "tf32"
    try:
        assert conv_allows_tf32()
        _check_shipped("bbcu-sr-x4", ["float"])  # the case TF32 broke (3 levels in 8 bits)
        assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision = saved


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_on_cuda_equal_cpu(name: str, tf32_everywhere: None) -> None:
    _check_shipped(name, ["float", "fp16"])


@pytest.mark.parametrize("name", RANDOM)
def test_random_weights_on_cuda_equal_cpu(name: str, tf32_everywhere: None) -> None:
    _check_random(name, ["float", "fp16"])


# The fused backend last: under pytest -x a failure of the Triton path cannot hide the results above.
UNIT_CASES = [(64, 64, 1, False), (64, 64, 1, True), (64, 64, 2, False), (32, 32, 3, False),
              (64, 3, 1, False)]


@needs_triton
@pytest.mark.parametrize(("cin", "cout", "up", "bias"), UNIT_CASES)
def test_fused_unit_is_bitwise_the_float_unit(cin: int, cout: int, up: int, bias: bool) -> None:
    from models.kernels import fused

    ref = deploy_unit(cin, cout, seed=cin + cout + up, up=up, bias=bias).cuda()
    unit = fused.FusedUnit(ref)
    g = torch.Generator().manual_seed(up)
    x = (torch.randn(2, cin, 37, 53, generator=g) * 3).cuda()
    x[:, :, 5, 7] = -ref.shift.view(1, -1)  # exact zeros of x + shift
    residual = torch.randn(2, cout, 37, 53, generator=g).cuda() if cout != cin else None
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        with torch.no_grad():
            assert torch.equal(unit(xl, residual), ref(xl, residual))


@needs_triton
@pytest.mark.parametrize("name", SHIPPED)
def test_fused_shipped_weights_equal_cpu(name: str, tf32_everywhere: None) -> None:
    _check_shipped(name, ["fused"])


@needs_triton
@pytest.mark.parametrize("name", RANDOM)
def test_fused_random_weights_equal_cpu_and_float(name: str, tf32_everywhere: None) -> None:
    outs = _check_random(name, ["float", "fused"])
    assert _max_diff(outs["fused"], outs["float"]) <= TOL  # the same arithmetic on the same device
