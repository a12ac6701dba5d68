"""Fused binary units in Triton: one kernel per unit on the GPU (the ``fused`` backend).

``FusedUnit`` replaces a ``DeployUnit``. Its kernel is an implicit GEMM over the nine taps of the
3x3 convolution: int8 {-1, 0, +1} input signs (NHWC) times int8 weight signs, accumulated in int32
(tensor cores on the GPU), so the counts are exact. The epilogue applies, one rounding at a time
and in ``DeployUnit``'s order, count * alpha, + pre, PReLU, + post and the residual (the input,
an external tensor, a scalar, or for BBCU-U the nearest-upsampled input after the pixel shuffle);
it writes the fp32 output and, when the next unit of a chain consumes that output, the next
unit's input signs ``sign(out + next.shift)`` as int8, so that unit reads one byte per value
instead of recomputing them. Floating-point contraction (FMA) is disabled at compile time, so the
outputs are bitwise equal to the float deploy units on the same device.

On CUDA tensors the kernel is compiled; on CPU tensors it runs in Triton's interpreter (NumPy;
slow, for tests). ``available()`` tells whether Triton can be imported.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch
from torch import Tensor, nn

from models.deploy import DeployUnit
from models.kernels.chain import KernelUnit, chain_names, link_chain, replace_units

# One tile shape for every unit (narrower units are zero-padded): int8 tensor-core dots need K of at
# least 32, and fewer distinct shapes mean fewer compilations; 64 is the paper's width.
BLOCK_M, BLOCK_N, BLOCK_K = 128, 64, 64


def available() -> bool:
    return importlib.util.find_spec("triton") is not None


def unavailable_reason() -> str:
    return "" if available() else "Triton is not installed (pip install triton; it ships with CUDA PyTorch)"


@functools.cache
def _compiled(interpret: bool) -> Any:
    """The kernel for CUDA tensors (compiled) or for CPU tensors (Triton's NumPy interpreter)."""
    import triton

    from models.kernels.fused_kernel import unit_kernel

    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(unit_kernel)
    return triton.jit(unit_kernel)


def _is_nhwc(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def signs_nhwc(x: Tensor, shift: Tensor) -> Tensor:
    """sign(x + shift) of an NCHW-shaped float tensor as int8 NHWC (same rounding as DeployUnit)."""
    return torch.add(x, shift.view(1, -1, 1, 1)).sign_().to(torch.int8).permute(0, 2, 3, 1).contiguous()


class FusedUnit(KernelUnit):
    """A BBCU (or BBCU-U) unit computed by one Triton kernel; same math as ``DeployUnit``."""

    wq: Tensor

    def __init__(self, unit: DeployUnit) -> None:
        super().__init__(unit)
        wsign, cin, cout = unit.wsign, self.cin, self.cout
        cin_pad = -(-cin // BLOCK_K) * BLOCK_K
        cout_pad = -(-cout // BLOCK_N) * BLOCK_N
        # K-major weights: row tap*cin_pad + ci, column o; the padding is zero
        wq = torch.zeros((9, cin_pad, cout_pad), dtype=torch.int8, device=wsign.device)
        wq[:, :cin, :cout] = wsign.permute(2, 3, 1, 0).reshape(9, cin, cout).to(torch.int8)
        self.register_buffer("wq", wq)

    def extra_repr(self) -> str:
        return f"{self.cin} -> {self.cout}, upscale={self.upscale}"

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        n, cin, h, w = self.check_input(x)
        if x.device != self.wq.device:
            raise ValueError(f"input on {x.device}, unit on {self.wq.device}")
        x = x.float()
        signs = self.link_in.take(x) if self.link_in is not None else None
        owned = signs is not None  # x is the output of the previous unit of this chain
        if signs is None:
            signs = signs_nhwc(x, self.shift)
        r, c = self.upscale, self.channels
        if residual is not None and r > 1:
            raise ValueError("an upsampling unit takes no external residual")
        res = x if residual is None else residual.float().expand(n, c, h, w)
        fmt = torch.channels_last if _is_nhwc(x) else torch.contiguous_format
        if owned and r == 1 and residual is None:
            out = x  # in place: each element's residual is read before its output is written
        else:
            out = torch.empty((n, c, h * r, w * r), device=x.device, memory_format=fmt)
        link = self.link_out
        nsigns = signs if link is None else torch.empty((n, h * r, w * r, c), dtype=torch.int8,
                                                         device=x.device)
        nshift = self.shift if link is None else link.consumer.shift
        grid = (-(-n * h * w // BLOCK_M), self.wq.shape[2] // BLOCK_N)
        _compiled(x.device.type == "cpu")[grid](
            signs, self.wq, self.alpha, self.pre, self.slope, self.post,
            res, *res.stride(), out, *out.stride(), nshift, nsigns,
            n * h * w, h, w, cin, self.cout, self.wq.shape[1], self.wq.shape[2],
            R=r, HAS_NEXT=link is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
            num_warps=4, enable_fp_fusion=False)
        if link is not None:
            link.tensor, link.act = out, nsigns
        return out


def convert(net: nn.Module) -> nn.Module:
    """Replace (in place) every DeployUnit of ``net`` by a FusedUnit, linking chained units."""
    chain = chain_names(net)  # before the deploy units are replaced
    units = dict(replace_units(net, FusedUnit))
    link_chain(chain, units)  # type: ignore[arg-type]
    return net
