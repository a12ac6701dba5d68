"""The record each network family registers: how to recognise, build and tile it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from models.config import NetworkConfig


@dataclass(frozen=True)
class Architecture:
    """One network family (spandrel's idea of an architecture support record).

    ``tasks`` are the tasks its networks serve; ``detect`` reads a configuration from a state dict
    (None when the dict is another family's); ``receptive_radius`` bounds how many input pixels on
    each side influence one output pixel (the tile halo); ``unchained`` names the binary units a
    bit-packed kernel chain must not link, because something other than the previous unit's
    unmodified output feeds them; ``official_wrapper`` is the key the authors' checkpoint files
    wrap the state dict in (None: a plain state dict); ``activation_tensors`` is the peak memory
    of one forward pass, in float32 tensors of nf channels per input pixel and per output pixel
    (measured; it sets the tile size for a memory budget); ``kernel_activation_tensors`` the same
    where the CPU kernels run the network in fp32 (the bit-packed backend), if it differs.
    """

    name: str
    tasks: frozenset[str]
    network: type[nn.Module]
    build: Callable[[NetworkConfig], nn.Module]
    detect: Callable[[dict[str, Tensor]], NetworkConfig | None]
    receptive_radius: Callable[[NetworkConfig], int]
    unchained: frozenset[str]
    activation_tensors: tuple[float, float]
    official_wrapper: str | None = None
    kernel_activation_tensors: tuple[float, float] | None = None
