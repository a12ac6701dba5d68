"""Parameter and operation counts by the paper's convention.

OPs = FLOPs + BOPs / 64 and params = float params + binary params / 32, where a FLOP is one
multiply-accumulate of a float convolution and a BOP one of a binary convolution (this reproduces
the paper's 79.2 G OPs / 372K params for BBCU-L x4 and 3.95 G / 51K for BBCU-M x4 at 320x180).
The paper's params leave out the per-channel shifts and PReLU slopes of the units; we report them
separately as ``unit_params``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models import archs
from models.blocks import HardBinaryConv
from models.config import NetworkConfig


@dataclass(frozen=True)
class Complexity:
    float_params: int
    binary_params: int
    unit_params: int
    flops: int
    bops: int

    @property
    def params_paper(self) -> float:
        return self.float_params + self.binary_params / 32

    @property
    def ops_paper(self) -> float:
        return self.flops + self.bops / 64

    def as_dict(self) -> dict[str, float]:
        return {"float_params": self.float_params, "binary_params": self.binary_params,
                "unit_params": self.unit_params, "params_paper": self.params_paper,
                "flops": self.flops, "bops": self.bops, "ops_paper": self.ops_paper}


def count(config: NetworkConfig, height: int = 180, width: int = 320) -> Complexity:
    """Counts for one input of ``height`` x ``width`` pixels (shapes traced on the meta device)."""
    with torch.device("meta"):
        net = archs.build(config)
    macs = {"float": 0, "binary": 0}

    def hook(kind: str) -> object:
        def record(m: nn.Conv2d, _inp: tuple[Tensor, ...], out: Tensor) -> None:
            k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
            macs[kind] += out.numel() * k
        return record

    fparams = bparams = 0
    for m in net.modules():
        if isinstance(m, HardBinaryConv):
            m.register_forward_hook(hook("binary"))  # type: ignore[arg-type]
            bparams += m.weight.numel()
            fparams += 0 if m.bias is None else m.bias.numel()
        elif isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook("float"))  # type: ignore[arg-type]
            fparams += sum(p.numel() for p in m.parameters())
    total = sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        net(torch.empty(1, config.in_nc, height, width, device="meta"))
    return Complexity(float_params=fparams, binary_params=bparams,
                      unit_params=total - fparams - bparams,
                      flops=macs["float"], bops=macs["binary"])
