"""Binary building blocks of BBCU (Xia et al., "Basic Binary Convolution Unit for Binarized Image
Restoration Network", ICLR 2023).

These are the *training-mode* modules: their parameter names match the official state dicts
(``move0.bias``, ``binary_conv.weight``, ``relu.pr_bias0.bias`` ...) and their forward uses the
straight-through estimators of the paper. Each STE is one autograd function whose backward is a
single fused expression (no chain of masked elementwise ops). The inference engine
(``models.engine``) replaces these modules by deploy versions without any STE arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import Tensor, nn

from models.bands import ONEDNN_MIN_NUMEL

if TYPE_CHECKING:
    from models.bilinear_base import BilinearBase


class _SignSTE(torch.autograd.Function):
    """sign(a) forward; backward d/da ~ max(0, 2 - 2|a|) (the piecewise-quadratic approximation)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: Tensor) -> Tensor:
        ctx.save_for_backward(a)
        return torch.sign(a)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (a,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * (2.0 - 2.0 * a.abs()).clamp_(min=0.0)


class _BinaryConv(torch.autograd.Function):
    """3x3 conv of activation signs with alpha * sign(W), zero padding.

    Forward: exact integer counts ``conv(s, sign(W))`` times alpha, the same float expression the
    inference engine evaluates, so training-mode and deploy outputs agree bitwise. Backward: the
    paper's STE, i.e. the gradient of ``conv(s, Wb)`` with ``Wb = alpha * sign(W)`` for ``s``, and
    for ``W`` as if ``Wb`` were ``clamp(W, -1, 1)`` (alpha detached).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, s: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(s, w)
        alpha = weight_scale(w).view(1, -1, 1, 1)
        return F.conv2d(s, torch.sign(w), padding=1).mul_(alpha)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        s, w = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_s = grad_w = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            wb = weight_scale(w).view(-1, 1, 1, 1) * torch.sign(w)
            grad_s = torch.nn.grad.conv2d_input(s.shape, wb, grad, padding=1)
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            grad_w = torch.nn.grad.conv2d_weight(s, w.shape, grad, padding=1)
            grad_w.mul_((w.abs() <= 1.0).to(grad_w.dtype))
        return grad_s, grad_w


def sign_ste(a: Tensor) -> Tensor:
    return _SignSTE.apply(a)


def binary_conv_ste(s: Tensor, w: Tensor) -> Tensor:
    return _BinaryConv.apply(s, w)


def weight_scale(w: Tensor) -> Tensor:
    """Per-output-channel scale alpha = mean |W| over (in, kh, kw), shape (C_out,).

    Summed in float64 and rounded once, so alpha does not depend on the memory layout of W (the
    summation order of a float32 mean does) and every path uses the same alpha bit for bit.
    """
    return w.detach().double().abs().mean(dim=(1, 2, 3)).to(w.dtype)


def repeat_channels(x: Tensor, n: int) -> Tensor:
    """BBCU-H input: the image channels repeated until there are n of them."""
    reps = math.ceil(n / x.shape[1])
    return x.repeat(1, reps, 1, 1)[:, :n]


class LearnableBias(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class RPReLU(nn.Module):
    """PReLU with learnable shifts before and after (ReActNet's RPReLU)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pr_bias0 = LearnableBias(channels)
        self.pr_prelu = nn.PReLU(channels, init=0.25)
        self.pr_bias1 = LearnableBias(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.pr_bias1(self.pr_prelu(self.pr_bias0(x)))


class HardBinaryConv(nn.Conv2d):
    """3x3 convolution of binary activations with alpha-scaled binary weights (zero padding).

    ``forward`` returns the scaled counts without the bias: the unit adds the bias together with
    RPReLU's first shift, in the order the inference engine uses.
    """

    def __init__(self, in_ch: int, out_ch: int, bias: bool = False) -> None:
        super().__init__(in_ch, out_ch, 3, padding=1, bias=bias)

    def forward(self, s: Tensor) -> Tensor:
        return binary_conv_ste(s, self.weight)

    def pre_shift(self, shift: Tensor) -> Tensor:
        """RPReLU's first shift plus this conv's bias, as one (1, C, 1, 1) tensor."""
        return shift if self.bias is None else shift + self.bias.view(1, -1, 1, 1)


def _rprelu(conv: HardBinaryConv, act: RPReLU, s: Tensor) -> Tensor:
    """Scaled counts, + (shift + bias), PReLU, + shift: one rounding each, as in ``models.deploy``."""
    t = conv(s) + conv.pre_shift(act.pr_bias0.bias)
    return act.pr_bias1(act.pr_prelu(t))


class BinaryConv2d(nn.Module):
    """The basic binary convolution unit (BBCU): shift, sign, binary conv, RPReLU, residual.

    ``residual`` selects what is added back: the input itself (C_out == C_in), or, for the
    tail unit BBCU-T, an externally supplied tensor passed to ``forward``.
    """

    def __init__(self, in_ch: int, out_ch: int, bias: bool = False) -> None:
        super().__init__()
        self.move0 = LearnableBias(in_ch)
        self.binary_conv = HardBinaryConv(in_ch, out_ch, bias=bias)
        self.relu = RPReLU(out_ch)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        y = _rprelu(self.binary_conv, self.relu, sign_ste(self.move0(x)))
        return y + (x if residual is None else residual)


class BinaryUpConv2d(nn.Module):
    """BBCU-U: a unit with C*r*r outputs, pixel shuffle, and a nearest-upsampled residual."""

    def __init__(self, channels: int, upscale: int) -> None:
        super().__init__()
        self.upscale = upscale
        self.move0 = LearnableBias(channels)
        self.binary_conv = HardBinaryConv(channels, channels * upscale * upscale)
        self.relu = RPReLU(channels * upscale * upscale)

    def forward(self, x: Tensor) -> Tensor:
        y = F.pixel_shuffle(_rprelu(self.binary_conv, self.relu, sign_ste(self.move0(x))), self.upscale)
        return y + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


class BinaryBlock(nn.Module):
    """Body block of the SR networks: two BBCUs in sequence (no block-level skip)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(BinaryConv2d(channels, channels), BinaryConv2d(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@runtime_checkable
class ChainRunner(Protocol):
    """A unit whose backend can run it and the units after it as one call (the CPU kernels)."""

    def run_chain(self, units: Sequence[nn.Module], x: Tensor, *, consume: bool = False,
                  last: nn.Conv2d | None = None) -> Tensor | None: ...


@runtime_checkable
class PipeRunner(Protocol):
    """A unit whose backend can run it, the units after it and a thin last convolution as one call."""

    def run_pipe(self, units: Sequence[nn.Module], slope: float, last: nn.Conv2d, x: Tensor,
                 base: BilinearBase | None = None) -> Tensor | None: ...


@runtime_checkable
class LeakyFused(Protocol):
    """A unit whose backend applies a following leaky ReLU in its own epilogue (the CPU kernels)."""

    def forward_leaky(self, x: Tensor, slope: float) -> Tensor: ...


def unit_lrelu(unit: nn.Module, x: Tensor, lrelu: nn.LeakyReLU) -> Tensor:
    """``lrelu(unit(x))``; a kernel unit does the activation in its epilogue, bitwise the same."""
    if isinstance(unit, LeakyFused):
        return unit.forward_leaky(x, float(lrelu.negative_slope))
    return lrelu(unit(x))


def run_units(units: Sequence[nn.Module], x: Tensor, *, consume: bool = False,
              last: nn.Conv2d | None = None) -> Tensor:
    """``x`` through ``units`` in order, each taking the previous one's output, then through the
    float convolution ``last`` if given (a DnCNN's tail).

    A kernel backend may compute the whole run in one call (rows of every unit, and of a thin
    ``last``, in a wavefront, ``models.kernels``); its result is bitwise the same as calling them
    one by one. ``consume``: x is the caller's temporary, which the run may overwrite (no output of
    the image's size to allocate and fault in).
    """
    if units and isinstance(units[0], ChainRunner):
        out = units[0].run_chain(units, x, consume=consume, last=last)
        if out is not None:
            return out
    for unit in units:
        x = unit(x)
    return x if last is None else last(x)


def run_upsampler(units: Sequence[nn.Module], lrelu: nn.LeakyReLU, last: nn.Conv2d, x: Tensor,
                  base: BilinearBase) -> Tensor:
    """``base.apply(last(lrelu(units[-1](... units[0](x)))))``: binary upsampling units, a 1x unit
    with the activation (BBCU-M's conv_hr), the float last convolution and the network's output.

    A kernel backend may run it all as one call (``pipe`` in csrc/bitpacked.c: rows in a wavefront,
    nothing of the output's size but the result written); bitwise the same as step by step.
    """
    if units and isinstance(units[0], PipeRunner):
        out = units[0].run_pipe(units, float(lrelu.negative_slope), last, x, base)
        if out is not None:
            return out
    for unit in units[:-1]:
        x = unit(x)
    return base.apply(last(unit_lrelu(units[-1], x, lrelu)), consume=True)


def conv_relu(conv: nn.Module, x: Tensor) -> Tensor:
    """``relu(conv(x))``: a network's float head and its activation.

    For inference on the CPU where torch hands the convolution to oneDNN (float32, one channels_last
    image of more than ``ONEDNN_MIN_NUMEL`` elements, a 3x3 'same' convolution), one oneDNN call with
    the ReLU as its post-op: the same primitive, the activation applied to each finished sum, so the
    same bits without a second pass over the 64-channel output (``tests/test_kernels.py``).
    """
    fused = (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
             and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
             and x.shape[0] == 1 and x.numel() > ONEDNN_MIN_NUMEL
             and x.is_contiguous(memory_format=torch.channels_last) and torch.backends.mkldnn.is_available()
             and cpu_kernels_take(x, conv.weight) and conv.weight.dtype == torch.float32)
    if not fused:
        return torch.relu_(conv(x))
    assert isinstance(conv, nn.Conv2d)
    return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, [1, 1], [1, 1], [1, 1], 1,
                                                   "relu", [], "")


def cpu_kernels_take(x: Tensor, *params: Tensor) -> bool:
    """Whether a float-glue step may run in the CPU kernels: inference (no gradient wanted) on a CPU
    float32 tensor, with the extension built."""
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    from models import kernels

    return kernels.available()


class ThinConv2d(nn.Conv2d):
    """A float 3x3 'same' convolution to a few channels (a network's last layer, 64 -> 3).

    Inference on the CPU, with the kernel extension built, runs ``thin_conv`` (csrc/bitpacked.c),
    which computes only the outputs there are: oneDNN computes such a layer as if it had 16. Its sums
    differ from ``F.conv2d``'s in rounding only (another order of additions); every inference path
    on the CPU (both engines, the training network under ``no_grad``) takes the same one, so they stay
    bitwise equal. With gradients, on other devices or without the extension it is ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 3, 1, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if not cpu_kernels_take(x, self.weight) or self.out_channels > 16:
            return super().forward(x)
        from models.kernels.bitpacked import thin_conv

        return thin_conv(x, self.weight, self.bias)


def shuffle_lrelu(x: Tensor, upscale: int, lrelu: nn.LeakyReLU, out: Tensor | None = None,
                  threads: int | None = None) -> Tensor:
    """``lrelu(pixel_shuffle(x, upscale))``, the float upsampler's step (by 1: the activation alone),
    written into ``out`` if given (a channels_last tensor of the result's shape: a band's window in
    ``models.bands``).

    For inference on the CPU (a channels_last float32 tensor, the kernel extension built, upscale 2 or
    more) one pass of ``shuffle_lrelu`` (csrc/bitpacked.c, on ``threads`` threads, torch's by default)
    instead of a copy and another pass: a permutation and the same multiply as ``F.leaky_relu``, so
    bitwise the same result.
    """
    slope = float(lrelu.negative_slope)
    if upscale == 1 or not cpu_kernels_take(x) or not x.is_contiguous(memory_format=torch.channels_last):
        y = x if upscale == 1 else F.pixel_shuffle(x, upscale)
        return F.leaky_relu(y, slope) if out is None else torch.ops.aten.leaky_relu.out(y, slope, out=out)
    from models.kernels.bitpacked import shuffle_lrelu as fused

    return fused(x, upscale, slope, out=out, threads=threads)
