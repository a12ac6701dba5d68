"""The fused Triton units in Triton's interpreter on the CPU: bitwise equal to the float deploy units.

No GPU is needed: on CPU tensors ``models.kernels.fused`` runs its kernel in the interpreter, which
computes in NumPy with one IEEE rounding per operation, as the compiled kernel does with FMA
contraction off. The same comparisons run compiled in ``tests/test_cuda.py`` where CUDA exists.
"""

from __future__ import annotations

import copy

import pytest
import torch

from models import deploy
from models.kernels import fused
from tests.factories import deploy_unit, random_net, small_configs

pytest.importorskip("triton", reason="Triton is not installed")


def _x(c: int, h: int, w: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, c, h, w, generator=g) * scale


@pytest.mark.parametrize(("cin", "cout", "up", "bias"), [(16, 16, 1, False), (40, 40, 1, True),
                                                         (16, 16, 2, False), (8, 8, 3, False)])
def test_unit_is_bitwise_the_deploy_unit(cin: int, cout: int, up: int, bias: bool) -> None:
    ref = deploy_unit(cin, cout, seed=cin + up, up=up, bias=bias)
    unit = fused.FusedUnit(ref)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = _x(cin, 9, 13, seed=up).contiguous(memory_format=layout)
        x[0, :, 2, 3] = -ref.shift.view(-1)  # exact zeros of x + shift: sign 0
        with torch.no_grad():
            expect = ref(x)
            got = unit(x)
        assert got.shape == expect.shape
        assert torch.equal(got, expect)


def test_external_and_scalar_residuals() -> None:
    ref = deploy_unit(16, 3, seed=5)
    unit = fused.FusedUnit(ref)
    x = _x(16, 7, 10, seed=1, scale=2.0)
    base = _x(3, 7, 10, seed=2)
    with torch.no_grad():
        assert torch.equal(unit(x, residual=base), ref(x, residual=base))
        zero = x.new_zeros(())
        assert torch.equal(unit(x, residual=zero), ref(x, residual=zero))


def test_weights_with_exact_zeros_count_as_zero() -> None:
    ref = deploy_unit(16, 16, seed=7)
    ref.wsign[:, :3] = 0  # the bit-packed kernel cannot hold these; int8 can
    unit = fused.FusedUnit(ref)
    x = _x(16, 6, 6, seed=3)
    with torch.no_grad():
        assert torch.equal(unit(x), ref(x))


@pytest.mark.parametrize("name", ["denoise", "sr-m-x2", "sr-all-x2", "sr-l-x4"])
def test_network_is_bitwise_the_float_engine(name: str) -> None:
    cfg = small_configs(nf=16)[name]
    net = deploy.to_deploy(random_net(cfg, seed=3))
    fnet = fused.convert(copy.deepcopy(net))
    links = [m for m in fnet.modules() if isinstance(m, fused.FusedUnit) and m.link_out is not None]
    assert links or name == "sr-all-x2"  # chained units hand their signs on
    x = torch.rand(1, cfg.in_nc, 10, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expect = net(x)
        got = fnet(x)
    assert torch.equal(got, expect)


def test_links_read_the_buffers_the_network_holds_now() -> None:
    """Moving a network (``.to(device)``) replaces its buffers: a link must not keep the old ones."""
    cfg = small_configs(nf=16)["denoise"]
    net = deploy.to_deploy(random_net(cfg, seed=6))
    fnet = fused.convert(copy.deepcopy(net))
    fnet._apply(lambda t: t.clone())  # what .to() does to every buffer
    for m in (*net.modules(), *fnet.modules()):
        if isinstance(m, (deploy.DeployUnit, fused.FusedUnit)):
            m.shift.add_(0.25)
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(fnet(x), net(x))
