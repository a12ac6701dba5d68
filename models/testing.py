"""Random-init networks for tests and benchmarks: shifts, biases and slopes are drawn at random
too, so that every sign pattern (and every code path of the engines) is exercised."""

from __future__ import annotations

import torch
from torch import nn

from models import archs
from models.config import NetworkConfig


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every shift, bias and slope a random value so that signs and outputs vary."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("prelu.weight"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5)
            elif "bias" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def random_net(config: NetworkConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(archs.build(config), seed)
