"""Bit-packed kernels: exact integer counts, and whole networks bitwise equal to the float engine."""

from __future__ import annotations

import copy
import math
import os
import platform

import pytest
import torch
import torch.nn.functional as F

from models import deploy, kernels
from models.config import NetworkConfig
from models.engine import from_network
from tests.factories import random_net, small_configs
from tests.helpers import missing

if kernels.available():
    from models.kernels.bitpacked import BitUnit


ISAS = list(kernels.supported_isas())


@pytest.fixture(autouse=True)
def _built() -> None:
    """Every test here needs the built extension: without it they skip, or fail in CI."""
    if not kernels.available():
        missing(kernels.unavailable_reason())


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    before = kernels.isa()
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa(before)


@pytest.mark.parametrize("cin,cout", [(64, 64), (12, 12), (70, 70), (130, 16), (3, 5), (64, 256)])
def test_counts_equal_float_conv_of_signs(isa: str, cin: int, cout: int) -> None:
    from models.kernels.bitpacked import binary_counts

    g = torch.Generator().manual_seed(cin * 1000 + cout)
    x = torch.randn(2, cin, 17, 23, generator=g)
    if cin != 64:  # 64 channels: every activation nonzero away from the block (the no-mask fast path)
        x[x.abs() < 0.4] = 0.0                   # exact zeros: sign 0, contribute nothing
    x[:, :, 5:9, 2:6] = 0.0
    shift = torch.zeros(cin)
    w = torch.sign(torch.randn(cout, cin, 3, 3, generator=g))
    ref = F.conv2d(torch.sign(x), w, padding=1)  # zero padding: borders contribute 0, not -1
    got = binary_counts(x, shift, w)
    assert got.dtype == torch.int32
    assert torch.equal(got.float(), ref)
    assert (ref == 0).any()


def test_zero_weights_refused() -> None:
    from models.kernels.bitpacked import pack_weights

    w = torch.sign(torch.randn(16, 8, 3, 3))
    w[3, 2, 1, 1] = 0.0
    assert pack_weights(w)[1] == 1


def _configs() -> dict[str, NetworkConfig]:
    out = dict(small_configs(nf=12))
    for name in ("sr-l-x4", "sr-m-x3", "sr-all-x2", "denoise", "deblock"):
        cfg = small_configs()[name]
        out[f"{name}-nf70"] = NetworkConfig.from_dict({**cfg.to_dict(), "nf": 70})
    for name in ("sr-m-x4", "denoise"):
        cfg = small_configs()[name]
        out[f"{name}-nf64"] = NetworkConfig.from_dict({**cfg.to_dict(), "nf": 64})
    return out


CONFIGS = _configs()


def _zero_some_shifts(net: torch.nn.Module) -> None:
    """Zero the shift of some channels so that exactly-zero activations reach the sign."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("move0.bias"):
                p[:, ::3] = 0.0


# every variant with the default conv core; a few with the other cores (they share the epilogue code)
DEFAULT_ISA = kernels.isa()
_CASES = [(DEFAULT_ISA, name) for name in CONFIGS] + [
    (i, name) for i in ISAS if i != DEFAULT_ISA
    for name in ("sr-m-x3", "sr-all-x2-nf70", "deblock-nf70", "sr-l-x4", "denoise-nf64")]


@pytest.mark.parametrize("core,name", _CASES)
def test_network_bitwise_equal_to_float_engine(core: str, name: str) -> None:
    before = kernels.isa()
    kernels.set_isa(core)
    try:
        _check_network(name, full=core == DEFAULT_ISA)
    finally:
        kernels.set_isa(before)


def _check_network(name: str, full: bool) -> None:
    cfg = CONFIGS[name]
    net = random_net(cfg, seed=7)
    _zero_some_shifts(net)
    x = torch.rand(2, cfg.in_nc, 17, 23, generator=torch.Generator().manual_seed(3))
    x[:, :, 4:9, 6:12] = 0.0   # zero input: zero features where the head has no bias
    # the deploy-form network with float units vs the same with bit-packed units, in both memory
    # formats: the same float operations in the same order, so bitwise equal
    for fmt in (torch.contiguous_format, torch.channels_last)[: 2 if full else 1]:
        ref_net = deploy.to_deploy(copy.deepcopy(net)).to(memory_format=fmt)
        bit_net = kernels.to_bitpacked(deploy.to_deploy(copy.deepcopy(net))).to(memory_format=fmt)
        assert any(isinstance(m, BitUnit) for m in bit_net.modules())
        with torch.inference_mode():
            xf = x.contiguous(memory_format=fmt)
            ref, out = ref_net(xf), bit_net(xf)
        assert out.shape == ref.shape
        assert torch.equal(out, ref), f"{fmt}: max diff {(out - ref).abs().max().item()}"
    if not full:
        return
    # the engines (which may pick different memory formats for their float convs): within 1e-5
    fm = from_network(net, cfg, backend="float")
    bm = from_network(net, cfg, backend="bitpacked")
    assert bm.info.backend == "bitpacked" and fm.info.backend == "float"
    a, b = fm(x), bm(x)
    assert b.shape == a.shape and b.is_contiguous()
    assert (a - b).abs().max().item() <= 1e-5


def test_exact_zero_activations_reach_the_kernel() -> None:
    """With zero input and zero shifts, a denoise body unit sees exactly-zero activations."""
    cfg = small_configs(nf=12)["denoise"]
    net = random_net(cfg, seed=1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("move0.bias"):
                p.zero_()
    ref_net = deploy.to_deploy(copy.deepcopy(net))
    bit_net = kernels.to_bitpacked(deploy.to_deploy(copy.deepcopy(net)))
    x = torch.zeros(1, cfg.in_nc, 9, 11)
    x[:, :, 4, 5] = 0.5
    with torch.inference_mode():
        feat = ref_net.model[1](ref_net.model[0](x * cfg.k))
        assert (torch.sign(feat + ref_net.model[2].shift) == 0).float().mean() > 0.5
        assert torch.equal(ref_net(x), bit_net(x))


def test_chain_passes_packed_activations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a chain only the first unit packs its input; the others get bits from the epilogue.

    The body's units run as one ``chain`` call, which packs its own input and hands the bits of its
    output to upconv1; upconv1, upconv2 and conv_hr are single units fed by their predecessors."""
    from models.kernels import bitpacked

    cfg = small_configs(nf=12)["sr-m-x4"]
    bm = from_network(random_net(cfg, 2), cfg, backend="bitpacked")
    calls = {"pack_act": 0, "unit": 0, "chain": 0}

    class Spy:
        def __getattr__(self, attr: str):  # type: ignore[no-untyped-def]
            fn = getattr(kernels._ext, attr)
            if attr in calls:
                def wrapped(*a, **kw):  # type: ignore[no-untyped-def]
                    calls[attr] += 1
                    return fn(*a, **kw)
                return wrapped
            return fn

    monkeypatch.setattr(bitpacked, "_ext", Spy())
    bm(torch.rand(1, 3, 8, 9))
    # body 2 blocks x 2 units (one chain call), upconv1, upconv2, conv_hr: nothing packed again
    assert calls == {"pack_act": 0, "unit": 3, "chain": 1}


def test_unavailable_reason_and_backend_when_float() -> None:
    cfg = small_configs(nf=8)["denoise"]
    m = from_network(random_net(cfg), cfg, backend="auto")
    assert m.info.backend == "bitpacked"
    assert kernels.unavailable_reason() == ""


def test_engines_bitwise_equal() -> None:
    """Both CPU engines run their float convolutions in the same memory format: bitwise equal."""
    cfg = small_configs(nf=16)["deblock"]
    net = random_net(cfg, seed=5)
    x = torch.rand(1, cfg.in_nc, 21, 19, generator=torch.Generator().manual_seed(6))
    a = from_network(net, cfg, backend="float")(x)
    b = from_network(net, cfg, backend="bitpacked")(x)
    assert torch.equal(a, b)


def test_unit_with_a_zero_weight_keeps_the_float_path() -> None:
    cfg = small_configs(nf=12)["denoise"]
    net = random_net(cfg, seed=4)
    with torch.no_grad():
        net.model[3].binary_conv.weight[2, 1, 0, 0] = 0.0   # sign 0: not representable by one bit
    ref_net = deploy.to_deploy(copy.deepcopy(net))
    bit_net = kernels.to_bitpacked(deploy.to_deploy(copy.deepcopy(net)))
    assert isinstance(bit_net.model[3], deploy.DeployUnit)
    assert isinstance(bit_net.model[2], BitUnit) and isinstance(bit_net.model[4], BitUnit)
    x = torch.rand(1, cfg.in_nc, 13, 10, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(ref_net(x), bit_net(x))


# The kernel boundary: each of these once returned a result (garbage, or memory read out of bounds)
# instead of an error.


def test_counts_refuse_a_float64_input() -> None:
    from models.kernels.bitpacked import binary_counts

    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    w = torch.sign(torch.randn(4, 8, 3, 3))
    with pytest.raises(ValueError, match="x: expected float32, got float64"):
        binary_counts(x, torch.zeros(8), w)


def test_counts_refuse_a_shift_of_the_wrong_size() -> None:
    from models.kernels.bitpacked import binary_counts

    x = torch.randn(1, 8, 5, 5)
    w = torch.sign(torch.randn(4, 8, 3, 3))
    with pytest.raises(ValueError, match=r"shift: expected shape \(8\), got \(3\)"):
        binary_counts(x, torch.zeros(3), w)


@pytest.mark.parametrize("shape", [(4, 9, 3, 3), (4, 8, 5, 5), (4, 8, 9)])
def test_counts_refuse_weights_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    from models.kernels.bitpacked import binary_counts

    x = torch.randn(1, 8, 5, 5)
    with pytest.raises(ValueError, match="weights"):
        binary_counts(x, torch.zeros(8), torch.sign(torch.randn(*shape)))


def test_pack_activations_refuses_a_half_input() -> None:
    from models.kernels.bitpacked import pack_activations

    with pytest.raises(ValueError, match="x: expected float32, got float16"):
        pack_activations(torch.randn(1, 8, 5, 5).half(), torch.zeros(8))


def test_the_extension_checks_its_arrays_itself() -> None:
    """Called directly, the C functions check dtype, shape and writability of every array."""
    from models.kernels import _bitpacked as ext
    from models.kernels.bitpacked import as_array, pack_activations, pack_weights

    x = torch.randn(1, 70, 6, 7)
    act = pack_activations(x, torch.zeros(70))
    w = torch.sign(torch.randn(16, 70, 3, 3))
    wp, _ = pack_weights(w)
    counts = torch.empty((1, 6, 7, 16), dtype=torch.int32)
    ext.unit(as_array(act), as_array(wp), cin=70, cout=16, counts=as_array(counts))
    assert torch.equal(counts.permute(0, 3, 1, 2).float(), F.conv2d(torch.sign(x), w, padding=1))
    narrow, _ = pack_weights(torch.sign(torch.randn(16, 12, 3, 3)))  # packed for 12 input channels
    with pytest.raises(ValueError, match=r"weights: expected shape \(1, 9, 2, 16\), got \(1, 9, 1, 16\)"):
        ext.unit(as_array(act), as_array(narrow), cin=70, cout=16, counts=as_array(counts))
    with pytest.raises(ValueError, match=r"counts: expected shape \(1, 6, 7, 16\)"):
        ext.unit(as_array(act), as_array(wp), cin=70, cout=16, counts=as_array(counts[:, :5]))
    with pytest.raises(ValueError, match="counts: expected int32, got int64"):
        ext.unit(as_array(act), as_array(wp), cin=70, cout=16, counts=as_array(counts.long()))
    with pytest.raises(ValueError, match="act: expected int64, got float32"):
        ext.unit(as_array(act.float()), as_array(wp), cin=70, cout=16, counts=as_array(counts))
    with pytest.raises(ValueError, match="alpha: required unless counts is given"):
        ext.unit(as_array(act), as_array(wp), cin=70, cout=16, out=as_array(torch.empty(1, 16, 6, 7)))
    with pytest.raises(TypeError, match="cin and cout are required"):
        ext.unit(as_array(act), as_array(wp), counts=as_array(counts))
    with pytest.raises(TypeError):
        ext.unit(as_array(act), as_array(wp), 70, 16)  # sizes are keyword-only
    frozen = as_array(torch.empty((1, 9, 2, 16), dtype=torch.int64))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a C-contiguous writable array"):
        ext.pack_weights(weights=as_array(torch.ones(16, 70, 3, 3)), out=frozen)
    with pytest.raises(ValueError, match="x: expected a C-contiguous array of float32"):
        ext.pack_act(as_array(x)[..., ::2], as_array(torch.zeros(70)), as_array(act))




@pytest.mark.parametrize("w,r", [(1, 1), (2, 1), (7, 1), (24, 1), (9, 2)])
def test_units_the_same_on_every_core(w: int, r: int) -> None:
    """A 64-channel unit (r = 2: an upsampling one, 256 counts a pixel) gives bitwise the scalar
    core's output and next bits on every core, with windows that have a zero here and there: the
    AVX2 core takes full windows by table lookup, two at a time where both neighbours are full."""
    from models.kernels.bitpacked import as_array, pack_activations, pack_weights

    c, h, n = 64, 6, 2
    g = torch.Generator().manual_seed(w * 10 + r)
    wp, _ = pack_weights(torch.sign(torch.randn(c * r * r, c, 3, 3, generator=g)))
    al, pre, sl, po = (torch.randn(c * r * r, generator=g) * 0.1 for _ in range(4))
    x = torch.randn(n, h, w, c, generator=g)
    x[0, 2, w // 2, 5] = 0.0  # sign(0): the windows around it are not full
    x[1, 4, :: 3, 17] = 0.0
    shift, nshift = torch.zeros(c), torch.randn(c, generator=g) * 0.1
    act = pack_activations(x.permute(0, 3, 1, 2), shift)
    results = []
    before = kernels.isa()
    try:
        for core in ISAS:
            kernels.set_isa(core)
            out = torch.empty(n, h * r, w * r, c)
            nxt = torch.empty(n, h * r + 2, w * r + 2, 2, dtype=torch.int64)
            kernels._ext.unit(as_array(act), as_array(wp), cin=c, cout=c * r * r, alpha=as_array(al),
                              pre=as_array(pre), slope=as_array(sl), post=as_array(po), upscale=r,
                              residual=as_array(x), out=as_array(out),
                              next_shift=as_array(nshift), next_act=as_array(nxt), threads=2)
            results.append((core, out, nxt))
    finally:
        kernels.set_isa(before)
    _, ref_out, ref_bits = results[0]
    assert ISAS[0] == "scalar" and ref_out.abs().sum() > 0
    for core, out, nxt in results[1:]:
        assert torch.equal(out, ref_out), core
        assert torch.equal(nxt, ref_bits), core

def _random_units(c: int, count: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    from models.kernels.bitpacked import pack_weights

    g = torch.Generator().manual_seed(seed)
    units = []
    for _ in range(count):
        wp, zeros = pack_weights(torch.sign(torch.randn(c, c, 3, 3, generator=g)))
        assert zeros == 0
        units.append((wp, torch.rand(c, generator=g) * 0.02, torch.randn(c, generator=g) * 0.1,
                      torch.rand(c, generator=g) * 0.3, torch.randn(c, generator=g) * 0.1,
                      torch.randn(c, generator=g) * 0.1))
    return units


@pytest.mark.parametrize("n,h,w,c,count,threads,infinite", [
    (1, 17, 23, 64, 3, 2, False), (2, 9, 40, 64, 5, 2, False), (1, 30, 33, 16, 4, 3, False),
    (1, 5, 7, 70, 2, 2, False), (1, 40, 50, 64, 18, 2, False), (1, 1, 5, 64, 3, 2, False),
    (1, 12, 70, 128, 3, 1, False), (1, 17, 23, 64, 3, 2, True)])
def test_chain_equals_units_one_by_one(isa: str, n: int, h: int, w: int, c: int, count: int,
                                       threads: int, infinite: bool) -> None:
    """The wavefront over the rows of several units gives bitwise the units' results, with and
    without packed input bits, in place or not, and the bits it hands on equal the last unit's;
    also where a shift is infinite (its producer then takes the general epilogue, which writes
    bits: on AMX the stages must not pass int8 signs there)."""
    from models.kernels.bitpacked import as_array, pack_activations

    units = _random_units(c, count, seed=h * w + c)
    if infinite:
        units[1][5][:2] = torch.tensor([float("inf"), -float("inf")])
    g = torch.Generator().manual_seed(count)
    x = torch.randn(n, h, w, c, generator=g)
    x[x.abs() < 0.05] = 0.0  # exact zeros after the shift are rare; zeros before it exercise sign(0)
    arrays = [tuple(as_array(t) for t in u) for u in units]

    cur, act = x.clone(), pack_activations(x.permute(0, 3, 1, 2), units[0][5])
    first_act = act.clone()
    nshift = torch.randn(c, generator=g)
    for i, (wp, al, pre, sl, po, _) in enumerate(units):
        out = torch.empty_like(cur)
        shift_next = units[i + 1][5] if i + 1 < count else nshift
        nxt = torch.empty_like(act)
        kernels._ext.unit(as_array(act), as_array(wp), cin=c, cout=c, alpha=as_array(al), pre=as_array(pre),
                  slope=as_array(sl), post=as_array(po), residual=as_array(cur), out=as_array(out),
                  next_shift=as_array(shift_next), next_act=as_array(nxt), threads=threads)
        cur, act = out, nxt

    out = torch.empty_like(x)
    kernels._ext.chain(as_array(x), as_array(out), arrays, threads=threads)
    assert torch.equal(out, cur)
    packed_in_place = x.clone()  # the first unit packs its own input rows, then overwrites them
    kernels._ext.chain(as_array(packed_in_place), as_array(packed_in_place), arrays, threads=threads)
    assert torch.equal(packed_in_place, cur)
    inplace, bits = x.clone(), torch.empty_like(act)
    kernels._ext.chain(as_array(inplace), as_array(inplace), arrays, act=as_array(first_act),
               next_shift=as_array(nshift), next_act=as_array(bits), threads=threads)
    assert torch.equal(inplace, cur)
    assert torch.equal(bits, act)
    if n == 1 and c % 16 == 0:  # a thin tail as the last stage: thin_conv of the result, bitwise
        from models.kernels.bitpacked import thin_conv

        weight, bias = torch.randn(3, c, 3, 3, generator=g), torch.randn(3, generator=g)
        tailed, tail = x.clone(), torch.empty(n, h, w, 3)
        kernels._ext.chain(as_array(tailed), as_array(tailed), arrays, tail_weight=as_array(weight),
                           tail_bias=as_array(bias), tail_out=as_array(tail), threads=threads)
        assert torch.equal(tailed, cur)
        assert torch.equal(tail, thin_conv(cur.permute(0, 3, 1, 2), weight, bias).permute(0, 2, 3, 1))


def test_chain_refuses_bad_arguments() -> None:
    from models.kernels.bitpacked import as_array

    x = torch.randn(1, 6, 7, 64)
    units = [tuple(as_array(t) for t in u) for u in _random_units(64, 2, seed=1)]
    with pytest.raises(ValueError, match="units: expected 1..255 units"):
        kernels._ext.chain(as_array(x), as_array(x), [])
    with pytest.raises(ValueError, match=r"units\[1\]: expected a tuple"):
        kernels._ext.chain(as_array(x), as_array(x), [units[0], units[1][:5]])
    with pytest.raises(ValueError, match=r"units\[0\].alpha: expected shape"):
        kernels._ext.chain(as_array(x), as_array(x), [(units[0][0], as_array(torch.zeros(3)), *units[0][2:])])
    with pytest.raises(ValueError, match="out: expected shape"):
        kernels._ext.chain(as_array(x), as_array(torch.empty(1, 6, 8, 64)), units)
    with pytest.raises(ValueError, match="next_shift and next_act: give both or neither"):
        kernels._ext.chain(as_array(x), as_array(x), units, next_shift=units[0][5])


@pytest.mark.parametrize("cin,cout,bias", [(64, 3, True), (64, 1, False), (70, 3, True), (16, 4, True),
                                           (8, 2, False), (64, 16, True)])
def test_thin_conv_is_a_convolution_the_same_on_every_core(cin: int, cout: int, bias: bool) -> None:
    """The thin convolution computes F.conv2d up to rounding, bitwise the same on every core."""
    from models.kernels.bitpacked import thin_conv

    g = torch.Generator().manual_seed(cin + cout)
    x = torch.randn(2, cin, 13, 21, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3, generator=g)
    b = torch.randn(cout, generator=g) if bias else None
    ref = F.conv2d(x, w, b, padding=1)
    before, outs = kernels.isa(), []
    try:
        for core in ISAS:
            kernels.set_isa(core)
            outs.append(thin_conv(x, w, b))
    finally:
        kernels.set_isa(before)
    assert (outs[0] - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


def test_thin_conv_layer_falls_back_with_gradients() -> None:
    from models.blocks import ThinConv2d

    conv = ThinConv2d(16, 3)
    x = torch.randn(1, 16, 9, 8, requires_grad=True)
    y = conv(x)
    assert y.grad_fn is not None  # torch's convolution, differentiable
    with torch.no_grad():
        z = conv(x)
    assert z.grad_fn is None and (z - y.detach()).abs().max().item() <= 1e-5


@pytest.mark.parametrize("cin,h,w,bias", [(1, 90, 250, True), (3, 120, 77, True), (3, 60, 90, False),
                                           (3, 40, 50, True)])
def test_the_float_head_and_its_relu_in_one_call_are_bitwise_conv_then_relu(
        cin: int, h: int, w: int, bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The denoiser's head: oneDNN's convolution with the ReLU as its post-op where torch hands the
    convolution to oneDNN (above ONEDNN_MIN_NUMEL elements: the first three), torch's two steps
    below it: the same bits as conv then relu either way, negative zeros and all."""
    from models.bands import ONEDNN_MIN_NUMEL
    from models.blocks import conv_relu

    g = torch.Generator().manual_seed(cin * h + w)
    conv = torch.nn.Conv2d(cin, 64, 3, 1, 1, bias=bias).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        x = torch.randn(1, cin, h, w, generator=g).contiguous(memory_format=torch.channels_last)
        x[0, 0, :9, :9] = 0.0  # windows whose sum is a zero
        calls = []
        fused = torch.ops.mkldnn._convolution_pointwise

        def spy(*args):  # type: ignore[no-untyped-def]
            calls.append(args[-3])
            return fused(*args)

        monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", spy)  # the real op, counted
        got = conv_relu(conv, x)
        ref = torch.relu(conv(x))
    assert calls == (["relu"] if x.numel() > ONEDNN_MIN_NUMEL else [])
    assert torch.equal(got.contiguous().view(torch.int32), ref.contiguous().view(torch.int32))


@pytest.mark.parametrize("c,r", [(64, 2), (16, 2), (3, 3), (8, 2)])
def test_shuffle_lrelu_is_bitwise_pixel_shuffle_then_leaky_relu(c: int, r: int) -> None:
    from models.blocks import shuffle_lrelu

    x = torch.randn(2, c * r * r, 7, 9, generator=torch.Generator().manual_seed(c))
    x[0, :3, 0, 0] = torch.tensor([0.0, -0.0, float("nan")])
    x = x.contiguous(memory_format=torch.channels_last)
    ref = F.leaky_relu(F.pixel_shuffle(x, r), 0.1)
    before = kernels.isa()
    try:
        for core in ISAS:
            kernels.set_isa(core)
            out = shuffle_lrelu(x, r, torch.nn.LeakyReLU(0.1))
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(out.nan_to_num(7.0), ref.nan_to_num(7.0))
            assert torch.equal(torch.signbit(out), torch.signbit(ref))
    finally:
        kernels.set_isa(before)


@pytest.mark.parametrize("n,c,h,w", [(1, 3, 40, 57), (2, 3, 23, 50), (1, 1, 31, 60), (1, 3, 2, 70)])
@pytest.mark.parametrize("r", [2, 3, 4])
def test_bilinear_base_is_torchs_upsampling_then_add_and_divide(n: int, c: int, h: int, w: int,
                                                                 r: int) -> None:
    """(y + F.interpolate(x, r, bilinear)) / k bitwise, whole and by bands of rows, on every core,
    where torch takes its generic kernel (2 threads, outputs of more than 128 rows + columns)."""
    from models.kernels.bitpacked import add_base, base_rows

    g = torch.Generator().manual_seed(n * h + w + r)
    x = (torch.randn(n, c, h, w, generator=g) * 100).contiguous(memory_format=torch.channels_last)
    y = (torch.randn(n, c, h * r, w * r, generator=g) * 30).contiguous(memory_format=torch.channels_last)
    k = 130.0
    threads = torch.get_num_threads()
    before = kernels.isa()
    try:
        torch.set_num_threads(2)
        ref = (y + F.interpolate(x, scale_factor=r, mode="bilinear", align_corners=False)) / k
        for core in ISAS:
            kernels.set_isa(core)
            rows = base_rows(x, r)
            out = torch.empty_like(y)
            add_base(y, rows, r, k, out)
            assert torch.equal(out, ref), core
            band = y[:, :, 3:3 + r + 2].clone(memory_format=torch.channels_last)
            add_base(band, rows, r, k, band, row0=3, threads=1)  # in place
            assert torch.equal(band, ref[:, :, 3:3 + r + 2]), core
    finally:
        kernels.set_isa(before)
        torch.set_num_threads(threads)


def test_the_base_entries_refuse_what_does_not_fit() -> None:
    import numpy as np

    rows = np.zeros((1, 4, 10, 3), np.float32)
    y, out = np.zeros((1, 3, 10, 3), np.float32), np.zeros((1, 3, 10, 3), np.float32)
    with pytest.raises(ValueError, match=r"y: rows 6..8 outside the 8 rows of the upsampled image"):
        kernels._ext.add_base(y, rows, out, upscale=2, k=1.0, row0=6)
    with pytest.raises(ValueError, match=r"y: expected shape \(1, \*, 10, 3\), got \(1, 3, 9, 3\)"):
        kernels._ext.add_base(np.zeros((1, 3, 9, 3), np.float32), rows, out, upscale=2, k=1.0)
    with pytest.raises(ValueError, match="out: expected an array, got None"):
        kernels._ext.add_base(y, rows, None, upscale=2, k=1.0)
    with pytest.raises(ValueError, match="upscale: expected 1..8, got 0"):
        kernels._ext.add_base(y, rows, out, k=1.0)
    with pytest.raises(ValueError, match=r"out: expected shape \(1, 4, 10, 3\)"):
        kernels._ext.base_rows(np.zeros((1, 4, 5, 3), np.float32), np.zeros((1, 4, 5, 3), np.float32),
                               upscale=2)


def test_the_network_output_no_longer_depends_on_torchs_thread_count() -> None:
    """torch's bilinear upsampling takes another kernel on one thread (other rounding); the SR output
    through the kernels is the same on 1 and 2 threads, and the same as the torch expression on 2."""
    from models.bilinear_base import BilinearBase

    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, 30, 41, generator=g).contiguous(memory_format=torch.channels_last) * 130
    y = torch.randn(1, 3, 120, 164, generator=g).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(BilinearBase(x, 4, 130.0).apply(y))
        ref = (y + F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)) / 130.0
        torch.set_num_threads(1)
        one = (y + F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)) / 130.0
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], ref)
    assert not torch.equal(one, ref)  # torch's own: why the kernel computes it


def _counts_in_child(queue, act, wp, expected) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    # only the kernel: torch's own OpenMP pool is not usable in a child forked after it started
    counts = np.empty_like(expected)
    before = len(os.listdir("/proc/self/task"))
    kernels._ext.unit(act, wp, cin=64, cout=64, counts=counts, threads=2)
    queue.put((bool((counts == expected).all()), len(os.listdir("/proc/self/task")) - before))


def test_kernel_threads_work_after_fork() -> None:
    """The helper threads are a pool kept by the process; a forked child (Celery's prefork workers)
    has none of them and starts its own, instead of queueing work no thread takes."""
    import multiprocessing as mp

    from models.kernels.bitpacked import as_array, binary_counts, pack_activations, pack_weights

    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(1, 64, 20, 30, generator=g), torch.sign(torch.randn(64, 64, 3, 3, generator=g))
    expected = binary_counts(x, torch.zeros(64), w)  # the parent's pool runs
    act, (wp, _) = pack_activations(x, torch.zeros(64)), pack_weights(w)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_counts_in_child, args=(
        queue, as_array(act), as_array(wp), expected.permute(0, 2, 3, 1).contiguous().numpy()))
    child.start()
    equal, new_threads = queue.get(timeout=60)
    assert equal and new_threads >= 1  # the child started a helper thread of its own
    child.join(timeout=60)
    assert child.exitcode == 0


@pytest.mark.parametrize("entry", ["thin_conv", "shuffle_lrelu", "chain"])
def test_the_float_glue_entries_check_their_input(entry: str) -> None:
    import numpy as np

    kw = {"thin_conv": {"weight": np.zeros((3, 64, 3, 3), np.float32),
                        "out": np.zeros((1, 2, 2, 3), np.float32)},
          "shuffle_lrelu": {"out": np.zeros((1, 4, 4, 16), np.float32), "upscale": 2, "slope": 0.1},
          "chain": {"out": np.zeros((1, 2, 2, 64), np.float32), "units": []}}[entry]
    fn = getattr(kernels._ext, entry)
    with pytest.raises(ValueError, match="x: sizes N=1 H=0 W=2 C=64 out of range"):
        fn(np.zeros((1, 0, 2, 64), np.float32), **kw)
    with pytest.raises(ValueError, match="x: expected an array, got None"):
        fn(None, **kw)
    with pytest.raises(ValueError, match="x: expected float32, got float64"):
        fn(np.zeros((1, 2, 2, 64)), **kw)


@pytest.mark.parametrize("c,r,nchw", [(64, 1, False), (64, 1, True), (12, 1, False), (16, 2, False)])
def test_leaky_relu_in_the_epilogue_is_bitwise_the_torch_op(c: int, r: int, nchw: bool) -> None:
    """unit_lrelu(unit, x) on a bit-packed unit equals leaky_relu(unit(x)) on every core."""
    from models.blocks import BinaryConv2d, BinaryUpConv2d, unit_lrelu

    torch.manual_seed(c + r)
    train = BinaryConv2d(c, c) if r == 1 else BinaryUpConv2d(c, r)
    with torch.no_grad():
        for p in train.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    unit = BitUnit(deploy.DeployUnit(train))
    x = torch.randn(1, c, 9, 13)
    x = x if nchw else x.contiguous(memory_format=torch.channels_last)
    lrelu = torch.nn.LeakyReLU(0.1)
    before = kernels.isa()
    try:
        for core in ISAS:
            kernels.set_isa(core)
            with torch.inference_mode():
                ref = F.leaky_relu(unit(x), 0.1)
                got = unit_lrelu(unit, x, lrelu)
            assert (ref < 0).any() and torch.equal(got, ref)
    finally:
        kernels.set_isa(before)


def _random_up_unit(c: int, r: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(weights, alpha, pre, slope, post, shift) of a C -> C*r*r unit, outputs sub-pixel major."""
    from models.kernels.bitpacked import pack_weights

    cout = c * r * r
    wp, zeros = pack_weights(torch.sign(torch.randn(cout, c, 3, 3, generator=g)))
    assert zeros == 0
    return (wp, torch.rand(cout, generator=g) * 0.02, torch.randn(cout, generator=g) * 0.1,
            torch.rand(cout, generator=g) * 0.3, torch.randn(cout, generator=g) * 0.1,
            torch.randn(c, generator=g) * 0.1)


@pytest.mark.parametrize("c,h,w,ups,threads,bias,infinite", [
    (64, 9, 11, (2, 2, 1), 2, True, False), (64, 7, 5, (3, 1), 3, False, False),
    (32, 6, 9, (2, 1, 1), 1, True, False), (16, 5, 40, (1,), 2, True, False),
    (64, 1, 3, (2, 1), 2, True, False), (64, 6, 7, (2, 1), 2, True, True),
    (32, 5, 6, (2, 1), 2, False, True)])
def test_pipe_equals_units_then_thin_conv(isa: str, c: int, h: int, w: int, ups: tuple[int, ...],
                                         threads: int, bias: bool, infinite: bool) -> None:
    """The upsampler's wavefront gives bitwise what the units (the last with its leaky ReLU) and the
    thin convolution give one by one, also where a shift is infinite (the rows then take the general
    epilogue, which must read and write the rings too); a core without the pipe refuses it."""
    from models.kernels.bitpacked import as_array, pack_activations, thin_conv

    g = torch.Generator().manual_seed(c * h + w)
    units = [_random_up_unit(c, r, g) for r in ups]
    if infinite:  # the second unit's shift: its producer's fast epilogue does not apply
        units[1][5][:2] = torch.tensor([float("inf"), -float("inf")])
    x = torch.randn(1, h, w, c, generator=g)
    x[x.abs() < 0.05] = 0.0
    weight = torch.randn(3, c, 3, 3, generator=g)
    b = torch.randn(3, generator=g) if bias else None
    act0 = pack_activations(x.permute(0, 3, 1, 2), units[0][5])
    cur, act, hh, ww = x, act0, h, w
    for i, (wp, al, pre, sl, po, _) in enumerate(units):
        r, last = ups[i], i + 1 == len(units)
        out = torch.empty(1, hh * r, ww * r, c)
        nxt = None if last else torch.empty(1, hh * r + 2, ww * r + 2, 2 * ((c + 63) // 64),
                                            dtype=torch.int64)
        kernels._ext.unit(as_array(act), as_array(wp), cin=c, cout=c * r * r, upscale=r, alpha=as_array(al),
                          pre=as_array(pre), slope=as_array(sl), post=as_array(po), residual=as_array(cur),
                          out=as_array(out), next_shift=None if last else as_array(units[i + 1][5]),
                          next_act=None if nxt is None else as_array(nxt), threads=threads,
                          leaky_slope=0.1 if last else None)
        cur, act, hh, ww = out, nxt, hh * r, ww * r
    ref = thin_conv(cur.permute(0, 3, 1, 2), weight, b)
    params = [(*(as_array(t) for t in u), r, 0.1 if i + 1 == len(units) else None)
              for i, (u, r) in enumerate(zip(units, ups, strict=True))]
    got = torch.empty(1, hh, ww, 3)

    def call() -> None:
        kernels._ext.pipe(as_array(x), as_array(act0), as_array(got), params, as_array(weight),
                          bias=None if b is None else as_array(b), threads=threads)

    if isa not in kernels.PIPE_ISAS:
        with pytest.raises(ValueError, match="pipe: needs the avx2, avx512 or amx core"):
            call()
        return
    call()
    assert torch.equal(got, ref.permute(0, 2, 3, 1))
    # with the network's output (y + bilinear(img)) / k applied to each row as it is computed
    from models.kernels.bitpacked import add_base, base_rows

    scale = math.prod(ups)
    rows = base_rows(torch.randn(1, 3, h, w, generator=g), scale)
    kernels._ext.pipe(as_array(x), as_array(act0), as_array(got), params, as_array(weight),
                      bias=None if b is None else as_array(b), base=rows.numpy(), k=1.7, threads=threads)
    add_base(ref, rows, scale, 1.7, ref)
    assert torch.equal(got, ref.permute(0, 2, 3, 1))


def test_pipe_refuses_bad_arguments() -> None:
    from models.kernels.bitpacked import as_array

    if kernels.isa() not in kernels.PIPE_ISAS:
        pytest.skip("the pipe needs the avx2, avx512 or amx core")
    g = torch.Generator().manual_seed(0)
    u = tuple(as_array(t) for t in _random_up_unit(64, 2, g))
    x, act = torch.randn(1, 4, 5, 64), torch.zeros(1, 6, 7, 2, dtype=torch.int64)
    out, wt = torch.empty(1, 8, 10, 3), torch.randn(3, 64, 3, 3)
    with pytest.raises(ValueError, match=r"units\[0\]: expected \(weights"):
        kernels._ext.pipe(as_array(x), as_array(act), as_array(out), [u], as_array(wt))
    with pytest.raises(ValueError, match=r"units\[0\].upscale: expected 1..4"):
        kernels._ext.pipe(as_array(x), as_array(act), as_array(out), [(*u, 5, None)], as_array(wt))
    with pytest.raises(ValueError, match="out: expected shape"):
        kernels._ext.pipe(as_array(x), as_array(act), as_array(torch.empty(1, 4, 5, 3)), [(*u, 2, None)],
                          as_array(wt))
    with pytest.raises(ValueError, match="x: expected one image"):
        kernels._ext.pipe(as_array(torch.randn(2, 4, 5, 64)), as_array(act), as_array(out), [(*u, 2, None)],
                          as_array(wt))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the clock probe is x86 assembly")
def test_clock_probe_reads_a_real_clock() -> None:
    """The cycle tables divide by this: a core folding the adds (as Golden Cove folds immediates)
    would report several times the real clock."""
    from models.kernels import _bitpacked as ext  # type: ignore[attr-defined]

    hz = ext.clock_hz()
    assert 0.8e9 < hz < 6.5e9


def test_count_loop_probe_measures_the_loop() -> None:
    """`make bench kernels` prints this as the AVX-512 core's ceiling: a loop the compiler had
    dropped or hoisted would read below two 512-bit XOR+POPCNT+ADD a cycle (72 a pixel)."""
    from models.kernels import _bitpacked as ext  # type: ignore[attr-defined]

    seconds = ext.count_loop_seconds()
    if "avx512" not in kernels.supported_isas():
        assert seconds == 0.0
        return
    hz = ext.clock_hz()
    assert 36 <= seconds * hz < 5000
