"""Inference form of the binary units: no STE arithmetic, binarized weights computed once.

A deploy unit computes ``conv(sign(x + shift), sign(W))`` as exact integer counts and applies the
per-channel scale alpha after the sum (docs/networks.md), then RPReLU and the residual with few
passes over memory. The counts come from a *backend*:

- ``float``: an fp32 convolution of the signs (integers below 2**24 are exact in fp32);
- ``fp16``: the same in half precision on CUDA (integers up to 2048 are exact in fp16);
- ``bitpacked``: the XNOR/popcount CPU kernel of ``models.kernels`` where it is built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import BinaryConv2d, BinaryUpConv2d, weight_scale

CountFn = Callable[[Tensor, Tensor], Tensor]


def counts_float(s: Tensor, wsign: Tensor) -> Tensor:
    return F.conv2d(s, wsign, padding=1)


def counts_fp16(s: Tensor, wsign: Tensor) -> Tensor:
    return F.conv2d(s.half(), wsign.half(), padding=1).float()


class DeployUnit(nn.Module):
    """BBCU (or BBCU-U when ``upscale`` > 1) for inference."""

    wsign: Tensor
    alpha: Tensor
    shift: Tensor
    pre: Tensor
    slope: Tensor
    post: Tensor

    def __init__(self, unit: BinaryConv2d | BinaryUpConv2d, counts: CountFn = counts_float) -> None:
        super().__init__()
        w = unit.binary_conv.weight.detach()
        bias = unit.binary_conv.bias
        pre = unit.relu.pr_bias0.bias.detach().view(1, -1, 1, 1).clone()
        if bias is not None:
            pre = pre + bias.detach().view(1, -1, 1, 1)
        self.upscale = getattr(unit, "upscale", 1)
        self.register_buffer("wsign", torch.sign(w).contiguous())
        self.register_buffer("alpha", weight_scale(w).view(1, -1, 1, 1).contiguous())
        self.register_buffer("shift", unit.move0.bias.detach().view(1, -1, 1, 1).clone())
        self.register_buffer("pre", pre)
        self.register_buffer("slope", unit.relu.pr_prelu.weight.detach().clone())
        self.register_buffer("post", unit.relu.pr_bias1.bias.detach().view(1, -1, 1, 1).clone())
        self.counts = counts

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        c = self.counts(torch.add(x, self.shift).sign_(), self.wsign)
        # One rounding per operation, in this order (count * alpha, + pre, PReLU, + post, + residual):
        # the bit-packed kernel (models.kernels) does the same and its outputs are bitwise equal.
        y = F.prelu(c.mul_(self.alpha).add_(self.pre), self.slope).add_(self.post)
        if self.upscale > 1:
            y = F.pixel_shuffle(y, self.upscale)
            return y.add_(F.interpolate(x, scale_factor=self.upscale, mode="nearest"))
        return y.add_(x if residual is None else residual)


def to_deploy(net: nn.Module, counts: CountFn = counts_float) -> nn.Module:
    """Replace every training-mode binary unit of ``net`` (in place) by its deploy form."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (BinaryConv2d, BinaryUpConv2d)):
                setattr(parent, name, DeployUnit(child, counts))
    return net.eval().requires_grad_(False)
