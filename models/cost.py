"""A network's operations per input pixel from its configuration alone (no torch).

The API uses it to refuse a job whose work is out of proportion before any worker spends time on it.
Every convolution is 3x3 with padding 1, so its multiply-accumulates (MACs) grow with the pixels of
the resolution it runs at: the counts here are those ``models.complexity.count`` traces on the
network (tests/test_cost.py checks that they agree), divided by the input pixels. OPs follow the
paper: float MACs + binary MACs / 64.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.config import NetworkConfig

_K = 9  # a 3x3 kernel


@dataclass(frozen=True)
class PixelCost:
    """MACs per input pixel of one network."""

    flops: float
    bops: float

    @property
    def ops(self) -> float:
        return self.flops + self.bops / 64


def per_pixel(config: NetworkConfig) -> PixelCost:
    """The float and binary MACs one input pixel costs ``config``'s network."""
    macs = {"float": 0.0, "binary": 0.0}

    def conv(binary: bool, cin: int, cout: int, pixels: float = 1.0) -> None:
        # a binary unit convolves its input repeated (head) or as is: nf channels in either case
        macs["binary" if binary else "float"] += pixels * cout * cin * _K

    c, nf, parts = config, config.nf, config.binary
    conv("head" in parts, nf if "head" in parts else c.in_nc, nf)
    if c.task == "sr":
        for _ in range(2 * c.depth):  # each body block is two binary units
            conv(True, nf, nf)
        pixels = 1.0
        for r in ([2, 2] if c.scale == 4 else [c.scale]):
            conv("up" in parts, nf, nf * r * r, pixels)  # then a pixel shuffle: r*r times the pixels
            pixels *= r * r
        conv("up" in parts, nf, nf, pixels)  # conv_hr
        conv("tail" in parts, nf, c.out_nc, pixels)  # conv_last
    else:
        for _ in range(c.depth - 2):
            conv(True, nf, nf)
        conv("tail" in parts, nf, c.out_nc)
    return PixelCost(flops=macs["float"], bops=macs["binary"])
