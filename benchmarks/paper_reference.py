"""The paper-style float simulation of a BBCU network (the baseline of ``benchmarks.kernels``).

The authors' released code evaluates a binarized network as a training-mode forward in float: the
straight-through estimators are written as chains of masked elementwise operations that are
computed even at test time, and the weights are re-binarized on every call:

- activation: ``out = sign(a).detach() - f(a).detach() + f(a)`` where ``f`` is the piecewise
  quadratic (-1 below -1, a^2 + 2a on [-1, 0), -a^2 + 2a on [0, 1), 1 above), built from masks;
- weights: ``binary = (alpha * sign(W)).detach() - clamp(W, -1, 1).detach() + clamp(W, -1, 1)``
  with ``alpha`` the per-output mean of |W|, then a float conv2d with the binary weights;
- RPReLU as three modules (bias, PReLU, bias), then the residual.

This module re-implements that forward (written here, not copied) on the parameters of one of our
training-mode networks, so that all three paths of the benchmark run identical weights.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import BinaryConv2d, BinaryUpConv2d


def paper_sign(x: Tensor) -> Tensor:
    """sign(x) in value, with the piecewise-quadratic surrogate computed as masked float ops."""
    forward = torch.sign(x)
    m1 = (x < -1).type(torch.float32)
    m2 = (x < 0).type(torch.float32)
    m3 = (x < 1).type(torch.float32)
    f1 = -1 * m1 + (x * x + 2 * x) * (1 - m1)
    f2 = f1 * m2 + (-x * x + 2 * x) * (1 - m2)
    f3 = f2 * m3 + 1 * (1 - m3)
    return forward.detach() - f3.detach() + f3


def paper_binary_weight(w: Tensor) -> Tensor:
    alpha = torch.mean(torch.mean(torch.mean(w.abs(), dim=3, keepdim=True), dim=2, keepdim=True),
                       dim=1, keepdim=True).detach()
    no_grad = alpha * torch.sign(w)
    clipped = torch.clamp(w, -1.0, 1.0)
    return no_grad.detach() - clipped.detach() + clipped


class PaperUnit(nn.Module):
    """A BBCU / BBCU-U evaluated the way the released training code does."""

    def __init__(self, unit: BinaryConv2d | BinaryUpConv2d) -> None:
        super().__init__()
        self.unit = unit
        self.upscale = getattr(unit, "upscale", 1)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        u = self.unit
        a = x + u.move0.bias
        s = paper_sign(a)
        conv = u.binary_conv
        y = F.conv2d(s, paper_binary_weight(conv.weight), conv.bias, stride=1, padding=1)
        y = y + u.relu.pr_bias0.bias
        y = u.relu.pr_prelu(y)
        y = y + u.relu.pr_bias1.bias
        if self.upscale > 1:
            return F.pixel_shuffle(y, self.upscale) + F.interpolate(x, scale_factor=self.upscale,
                                                                    mode="nearest")
        return y + (x if residual is None else residual)


def paper_network(net: nn.Module) -> nn.Module:
    """A copy of a training-mode network whose binary units run the paper-style forward."""
    ref = copy.deepcopy(net)
    for parent in list(ref.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (BinaryConv2d, BinaryUpConv2d)):
                setattr(parent, name, PaperUnit(child))
    return ref.eval()
