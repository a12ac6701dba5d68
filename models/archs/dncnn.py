"""BBCU denoising and JPEG-deblocking networks (DnCNN-like, full resolution).

Xia et al., "Basic Binary Convolution Unit for Binarized Image Restoration Network", ICLR 2023.
``model.0`` a head conv (float, or a BBCU-H unit on the repeated input), ``model.1`` ReLU,
``model.2 .. model.{depth-1}`` binary units, ``model.{depth}`` the tail conv (float, or a binary
unit). The network predicts the scaled degradation and subtracts it. Module names follow KAIR.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from models.archs.architecture import Architecture
from models.blocks import BinaryConv2d, ThinConv2d, conv_relu, repeat_channels, run_units
from models.config import NetworkConfig
from models.vocab import Task, default_k


class BBCUDnCNN(nn.Module):
    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.k = c.k
        head: nn.Module = (BinaryConv2d(c.nf, c.nf, bias=c.bias) if "head" in c.binary
                           else nn.Conv2d(c.in_nc, c.nf, 3, 1, 1, bias=c.bias))
        units = [BinaryConv2d(c.nf, c.nf, bias=c.bias) for _ in range(c.depth - 2)]
        tail: nn.Module = (BinaryConv2d(c.nf, c.out_nc, bias=c.bias) if "tail" in c.binary
                           else ThinConv2d(c.nf, c.out_nc, bias=c.bias))
        self.model = nn.Sequential(head, nn.ReLU(inplace=True), *units, tail)

    def forward(self, img: Tensor) -> Tensor:
        x = img * self.k
        head, relu, *units, tail = self.model
        binary = self.config.binary
        feat = relu(head(repeat_channels(x, self.config.nf))) if "head" in binary else conv_relu(head, x)
        if "tail" in binary:
            feat = run_units(units, feat, consume=True)
            noise = tail(feat, residual=feat.new_zeros(()))
        else:
            assert isinstance(tail, nn.Conv2d)
            noise = run_units(units, feat, consume=True, last=tail)
        if noise.requires_grad:
            return (x - noise) / self.k
        # inference: into the noise estimate's own storage (x - noise is x + (-noise), exactly the
        # same floats), sparing two image-size tensors and their first-touch page faults
        return torch.sub(x, noise, out=noise).div_(self.k)


def build(config: NetworkConfig) -> BBCUDnCNN:
    return BBCUDnCNN(config)


def receptive_radius(config: NetworkConfig) -> int:
    return config.depth


_IDX = re.compile(r"^model\.(\d+)\.")


def detect(sd: dict[str, Tensor]) -> NetworkConfig | None:
    """Read a DnCNN-style network's configuration from its state dict alone; None if not one."""
    idx = {int(m.group(1)) for k in sd if (m := _IDX.match(k))}
    if not idx or 0 not in idx or "model.2.move0.bias" not in sd:
        return None
    depth = max(idx)
    parts = {"body"}
    if "model.0.move0.bias" in sd:
        parts.add("head")
        nf = int(sd["model.0.binary_conv.weight"].shape[0])
        bias = "model.0.binary_conv.bias" in sd
    else:
        w0 = sd["model.0.weight"]
        nf, in_nc = int(w0.shape[0]), int(w0.shape[1])
        bias = "model.0.bias" in sd
    if f"model.{depth}.move0.bias" in sd:
        parts.add("tail")
        out_nc = int(sd[f"model.{depth}.binary_conv.weight"].shape[0])
    else:
        out_nc = int(sd[f"model.{depth}.weight"].shape[0])
    if "head" in parts:
        in_nc = out_nc
    task: Task = "deblock" if in_nc == 1 else "denoise"
    return NetworkConfig(task=task, scale=1, in_nc=in_nc, out_nc=out_nc, nf=nf, depth=depth,
                         binary=frozenset(parts), bias=bias, k=default_k(nf))


# an in-place ReLU follows the head (model.0): no kernel chain may link it to the body
# RSS growth of one float-backend forward pass of the shipped networks at 256 px: 5.1 tensors per
# pixel; bit-packed 2.2 at 256 px, 1.1-1.25 at 1920x1080 (the chain works in place over the head's
# output; VmHWM above the loaded model, 2026-12-06)
ARCH = Architecture(name="dncnn", tasks=frozenset({"denoise", "deblock"}), network=BBCUDnCNN, build=build,
                    detect=detect, receptive_radius=receptive_radius, unchained=frozenset({"model.0"}),
                    activation_tensors=(5.5, 0.0), kernel_activation_tensors=(2.2, 0.0))
