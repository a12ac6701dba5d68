"""The architecture registry: one module per network family, each registering an ``Architecture``."""

from __future__ import annotations

from torch import Tensor, nn

from models.archs import dncnn, sr
from models.archs.architecture import Architecture
from models.config import NetworkConfig

REGISTRY: tuple[Architecture, ...] = (sr.ARCH, dncnn.ARCH)


def for_task(task: str) -> Architecture:
    """The family whose networks serve ``task``."""
    for arch in REGISTRY:
        if task in arch.tasks:
            return arch
    raise ValueError(f"no architecture serves task {task!r}")


def for_config(config: NetworkConfig) -> Architecture:
    return for_task(config.task)


def for_network(net: nn.Module) -> Architecture | None:
    """The family of a built network, or None for a network no family registered."""
    for arch in REGISTRY:
        if isinstance(net, arch.network):
            return arch
    return None


def build(config: NetworkConfig) -> nn.Module:
    return for_config(config).build(config)


def detect(sd: dict[str, Tensor]) -> NetworkConfig | None:
    """The configuration of the first family that recognises the state dict; None if none does."""
    for arch in REGISTRY:
        config = arch.detect(sd)
        if config is not None:
            return config
    return None
