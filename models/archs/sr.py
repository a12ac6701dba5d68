"""BBCU super-resolution networks (BBCU-L, BBCU-M and custom binary-part choices).

Xia et al., "Basic Binary Convolution Unit for Binarized Image Restoration Network", ICLR 2023.
An EDSR/SRResNet-like network: float or binary head, a body of binary blocks, pixel-shuffle
upsampling (float, or BBCU-U units), conv_hr and conv_last (float, or BBCU / BBCU-T units).
Module names follow the official BasicSR implementation so official checkpoints load strictly.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn

from models import bands
from models.archs.architecture import Architecture
from models.bilinear_base import BilinearBase
from models.blocks import (
    BinaryBlock,
    BinaryConv2d,
    BinaryUpConv2d,
    ThinConv2d,
    repeat_channels,
    run_units,
    run_upsampler,
    shuffle_lrelu,
    unit_lrelu,
)
from models.config import NetworkConfig
from models.errors import UnsupportedCheckpointError
from models.vocab import default_k


def _float_conv(cin: int, cout: int) -> nn.Conv2d:
    return ThinConv2d(cin, cout) if cout <= 4 else nn.Conv2d(cin, cout, 3, 1, 1)


def _init_float(conv: nn.Module, scale: float = 0.1) -> None:
    """Kaiming-normal init scaled by ``scale`` for a float conv; binary units keep torch defaults."""
    if isinstance(conv, nn.Conv2d):
        nn.init.kaiming_normal_(conv.weight)
        conv.weight.data.mul_(scale)
        if conv.bias is not None:
            conv.bias.data.zero_()


class BBCUSR(nn.Module):
    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.upscale = c.scale
        self.k = c.k
        nf, parts = c.nf, c.binary
        self.conv_first = BinaryConv2d(nf, nf) if "head" in parts else _float_conv(c.in_nc, nf)
        self.body = nn.Sequential(*[BinaryBlock(nf) for _ in range(c.depth)])
        steps = [2, 2] if c.scale == 4 else [c.scale]
        for i, r in enumerate(steps, start=1):
            up = BinaryUpConv2d(nf, r) if "up" in parts else _float_conv(nf, nf * r * r)
            self.add_module(f"upconv{i}", up)
        self.conv_hr = BinaryConv2d(nf, nf) if "up" in parts else _float_conv(nf, nf)
        self.conv_last = BinaryConv2d(nf, c.out_nc) if "tail" in parts else _float_conv(nf, c.out_nc)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)
        self.steps = steps
        for m in self.children():
            _init_float(m)  # kaiming x 0.1 for the float convs, as the official code

    def forward(self, img: Tensor) -> Tensor:
        x = img * self.k
        if "head" in self.config.binary:
            feat = self.lrelu(self.conv_first(repeat_channels(x, self.config.nf)))
        else:
            feat = self.lrelu(self.conv_first(x))
        out = run_units([unit for block in self.body for unit in block.body], feat,  # type: ignore[union-attr]
                        consume=True)
        base = BilinearBase(x, self.upscale, self.k)  # the output is (conv_last(...) + base) / k
        ups = [getattr(self, f"upconv{i}") for i in range(1, len(self.steps) + 1)]
        if "up" in self.config.binary and "tail" not in self.config.binary:
            # BBCU-M: binary upsampling and conv_hr, float conv_last (one kernel call on the CPU)
            assert isinstance(self.conv_last, nn.Conv2d)
            return run_upsampler([*ups, self.conv_hr], self.lrelu, self.conv_last, out, base)
        stages = self._float_stages(ups, base)
        if stages is not None and bands.can_run(stages, out):
            # the float upsampler and tail in bands of rows, bitwise the same as below (models.bands)
            size = (x.shape[2] * self.upscale, x.shape[3] * self.upscale)
            result = torch.empty((1, self.config.out_nc, *size), memory_format=torch.channels_last)
            return bands.run(stages, out, result)
        for up, r in zip(ups, self.steps, strict=True):
            out = up(out) if "up" in self.config.binary else shuffle_lrelu(up(out), r, self.lrelu)
        out = unit_lrelu(self.conv_hr, out, self.lrelu)
        if "tail" in self.config.binary:
            return self.conv_last(out, residual=base.base) / self.k
        return base.apply(self.conv_last(out), consume=True)

    def _float_stages(self, ups: list[nn.Module], base: BilinearBase) -> list[bands.Stage] | None:
        """The float upsampler, conv_hr and conv_last as banded stages, when all of them are float and
        no gradient is wanted from them (training runs them whole); else None."""
        if self.config.binary & {"up", "tail"} or base.x.shape[0] != 1:
            return None
        wants_grad = base.x.requires_grad or any(p.requires_grad for p in self.parameters())
        if torch.is_grad_enabled() and wants_grad:
            return None
        nf, lrelu = self.config.nf, self.lrelu

        def shuffle(r: int) -> bands.Post:
            # the kernel on the calling thread only: between a band's convolutions torch's OpenMP thread
            # spins on the other core, and a helper thread would compete with it
            return lambda y, dest, row: shuffle_lrelu(y, r, lrelu, out=dest, threads=1)

        stages = [bands.Stage(bands.RowConv(up), shuffle(r), nf, r)
                  for up, r in zip(ups, self.steps, strict=True)]
        stages.append(bands.Stage(bands.RowConv(self.conv_hr), shuffle(1), nf))  # by 1: the activation

        stages.append(bands.Stage(bands.RowConv(self.conv_last), base.apply_rows, self.config.out_nc))
        return stages


def build(config: NetworkConfig) -> BBCUSR:
    return BBCUSR(config)


def receptive_radius(config: NetworkConfig) -> int:
    """Input pixels on each side that influence one output pixel (an upper bound)."""
    # conv_first, 2 per block, up convs, conv_hr, conv_last and the bilinear base: all 3x3 or smaller
    return 1 + 2 * config.depth + len([2, 2] if config.scale == 4 else [config.scale]) + 2 + 1


_BODY = re.compile(r"^body\.(\d+)\.body\.([01])\.")


def detect(sd: dict[str, Tensor]) -> NetworkConfig | None:
    """Read an SR network's configuration from its state dict alone; None if not this family."""
    if not any(_BODY.match(k) for k in sd) or not any(k.startswith("conv_first.") for k in sd):
        return None
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BODY.match(k)))
    nf = int(sd["body.0.body.0.move0.bias"].shape[1])
    parts = {"body"}
    if "conv_first.move0.bias" in sd:
        parts.add("head")
        in_nc = 3
    else:
        in_nc = int(sd["conv_first.weight"].shape[1])
    up_binary = "upconv1.move0.bias" in sd
    hr_binary = "conv_hr.move0.bias" in sd
    if up_binary != hr_binary:
        raise UnsupportedCheckpointError(
            "SR checkpoint has binary " + ("upconvs but a float conv_hr" if up_binary
                                            else "conv_hr but float upconvs")
            + "; only both-binary (BBCU-M) or both-float (BBCU-L) are supported")
    if up_binary:
        parts.add("up")
        up_out = int(sd["upconv1.binary_conv.weight"].shape[0])
    else:
        up_out = int(sd["upconv1.weight"].shape[0])
    if "upconv2.weight" in sd or "upconv2.move0.bias" in sd:
        scale = 4  # two x2 steps
    else:
        r = math.isqrt(up_out // nf)
        if r * r * nf != up_out or r not in (2, 3):
            raise UnsupportedCheckpointError(
                f"upconv1 has {up_out} output channels for {nf} features: not a x2/x3 upsampler")
        scale = r
    if "conv_last.move0.bias" in sd:
        parts.add("tail")
        out_nc = int(sd["conv_last.binary_conv.weight"].shape[0])
    else:
        out_nc = int(sd["conv_last.weight"].shape[0])
    bias = "body.0.body.0.binary_conv.bias" in sd
    return NetworkConfig(task="sr", scale=scale, in_nc=in_nc, out_nc=out_nc, nf=nf, depth=depth,
                         binary=frozenset(parts), bias=bias, k=default_k(nf))


# a LeakyReLU follows conv_first and precedes conv_last: no kernel chain may link across them
# RSS growth of one float-backend forward pass of the shipped networks at 192..384 px: 3.85 tensors
# per input pixel + 2.29 per output pixel (x2: 13.0, x4: 40.5; bit-packed needs 80..90% of it)
ARCH = Architecture(name="sr", tasks=frozenset({"sr"}), network=BBCUSR, build=build, detect=detect,
                    receptive_radius=receptive_radius, unchained=frozenset({"conv_first", "conv_last"}),
                    activation_tensors=(4.0, 2.5), official_wrapper="params")
