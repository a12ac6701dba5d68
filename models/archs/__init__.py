"""One module per network family; each has ``build(config)`` and ``detect(state_dict)``."""

from __future__ import annotations

from torch import nn

from models.archs import dncnn, sr
from models.config import NetworkConfig

FAMILIES = (sr, dncnn)


def build(config: NetworkConfig) -> nn.Module:
    return sr.build(config) if config.family == "sr" else dncnn.build(config)
