"""The float peer networks of ``benchmarks.peers``, written from their papers (random weights).

- IMDN (Hui et al., ACM MM 2019): 6 information multi-distillation blocks of 64 channels, each
  three 3x3 convolutions that keep a quarter of their output and refine the rest, a fourth that
  gives the last quarter, contrast-aware channel attention and a 1x1 fusion; a 1x1 fusion of all
  blocks, a 3x3 convolution, the global skip and a one-step pixel-shuffle upsampler.
- EDSR-baseline (Lim et al., CVPR workshops 2017): 16 residual blocks of 64 channels without batch
  norm, a 3x3 convolution after them, the global skip, an x4 upsampler of two x2 pixel-shuffle steps.
- FFDNet (Zhang et al., TIP 2018), color: the image reshuffled to half size (12 channels) plus a
  3-channel noise-level map, 12 layers of 96 channels, shuffled back. Batch norm is folded into the
  convolutions' biases, as a deployed network would have it.
- DnCNN (Zhang et al., TIP 2017), color: 17 layers of 64 channels predicting the noise, which is
  subtracted from the input (batch norm folded likewise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class ContrastChannelAttention(nn.Module):
    """IMDN's CCA: per-channel standard deviation plus mean, squeezed 16x, as channel weights."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, channels // reduction, 1)
        self.excite = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * torch.sigmoid(self.excite(F.relu(self.squeeze(std + mean))))


class DistillationBlock(nn.Module):
    """IMDN's IMDB: distil a quarter of the channels at each of four steps, attend, fuse, skip."""

    def __init__(self, channels: int = 64, distilled: int = 16) -> None:
        super().__init__()
        rest = channels - distilled
        self.distilled = distilled
        self.steps = nn.ModuleList([_conv(channels, channels), _conv(rest, channels), _conv(rest, channels)])
        self.last = _conv(rest, distilled)
        self.attention = ContrastChannelAttention(4 * distilled)
        self.fuse = nn.Conv2d(4 * distilled, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        kept = []
        rest = x
        for step in self.steps:
            out = F.leaky_relu(step(rest), 0.05)
            kept.append(out[:, :self.distilled])
            rest = out[:, self.distilled:]
        kept.append(self.last(rest))
        return self.fuse(self.attention(torch.cat(kept, dim=1))) + x


class IMDN(nn.Module):
    def __init__(self, scale: int = 4, channels: int = 64, blocks: int = 6) -> None:
        super().__init__()
        self.head = _conv(3, channels)
        self.blocks = nn.ModuleList([DistillationBlock(channels) for _ in range(blocks)])
        self.fuse = nn.Conv2d(blocks * channels, channels, 1)
        self.body_tail = _conv(channels, channels)
        self.upsample = nn.Sequential(_conv(channels, 3 * scale * scale), nn.PixelShuffle(scale))

    def forward(self, x: Tensor) -> Tensor:
        feat = self.head(x)
        outs = []
        y = feat
        for block in self.blocks:
            y = block(y)
            outs.append(y)
        fused = F.leaky_relu(self.fuse(torch.cat(outs, dim=1)), 0.05)
        return self.upsample(self.body_tail(fused) + feat)  # type: ignore[no-any-return]


class ResBlock(nn.Module):
    """EDSR's residual block: conv, ReLU, conv, skip (no batch norm, residual scale 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = _conv(channels, channels)
        self.b = _conv(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(F.relu(self.a(x)))  # type: ignore[no-any-return]


class EDSRBaseline(nn.Module):
    # the DIV2K RGB mean EDSR subtracts before the network and adds back after it
    RGB_MEAN = (0.4488, 0.4371, 0.4040)
    mean: Tensor

    def __init__(self, scale: int = 4, channels: int = 64, blocks: int = 16) -> None:
        super().__init__()
        if scale & (scale - 1):
            raise ValueError("this EDSR upsampler takes a power-of-two scale")
        self.register_buffer("mean", torch.tensor(self.RGB_MEAN).view(1, 3, 1, 1))
        self.head = _conv(3, channels)
        self.body = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)], _conv(channels, channels))
        steps: list[nn.Module] = []
        for _ in range(scale.bit_length() - 1):
            steps += [_conv(channels, 4 * channels), nn.PixelShuffle(2)]
        self.tail = nn.Sequential(*steps, _conv(channels, 3))

    def forward(self, x: Tensor) -> Tensor:
        feat = self.head(x - self.mean)
        return self.tail(self.body(feat) + feat) + self.mean  # type: ignore[no-any-return]


def _plain_stack(cin: int, channels: int, cout: int, layers: int) -> nn.Sequential:
    """conv+ReLU, (layers - 2) x conv+ReLU (batch norm folded in), conv: FFDNet's and DnCNN's body."""
    mods: list[nn.Module] = [_conv(cin, channels), nn.ReLU(inplace=True)]
    for _ in range(layers - 2):
        mods += [_conv(channels, channels), nn.ReLU(inplace=True)]
    mods.append(_conv(channels, cout))
    return nn.Sequential(*mods)


class FFDNet(nn.Module):
    def __init__(self, channels: int = 96, layers: int = 12, sigma: float = 25 / 255) -> None:
        super().__init__()
        self.sigma = sigma
        self.body = _plain_stack(4 * 3 + 3, channels, 4 * 3, layers)

    def forward(self, x: Tensor) -> Tensor:
        small = F.pixel_unshuffle(x, 2)  # odd sizes: FFDNet pads to even first; callers use even sizes
        level = torch.full_like(small[:, :3], self.sigma)
        return F.pixel_shuffle(self.body(torch.cat([small, level], dim=1)), 2)


class DnCNN(nn.Module):
    def __init__(self, channels: int = 64, layers: int = 17) -> None:
        super().__init__()
        self.body = _plain_stack(3, channels, 3, layers)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.body(x)  # type: ignore[no-any-return]


def param_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
