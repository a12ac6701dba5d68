"""Float convolution stages run in horizontal bands of rows (BBCU-L's float upsampler).

BBCU-L x4 ends in float layers at the output resolution: upconv1, a pixel shuffle and leaky ReLU,
upconv2, another shuffle and leaky ReLU, conv_hr and its leaky ReLU, conv_last. Run one layer at a
time, each of their 1280x960x64 results (315 MB for a 320x240 input) is written to memory, first
touched, and read back by the next step. ``run`` streams the rows through all of them instead: each
stage holds a window of its input rows, computes the output rows whose 3x3 neighbourhood has
arrived, hands them to the next stage's window, and keeps only the one row of halo the next band
needs, so every intermediate stays in cache and only the result is written at full size. No row is
computed twice (the halo rows are kept, not recomputed).

Exactness: every operation is the one the unbanded network runs, on a band of rows instead of the
whole image; the result is bitwise the same provided each convolution sums a pixel's products in an
order that does not depend on the image height. oneDNN's direct convolutions do (measured on the
shapes of every shipped network; ``tests/test_bands.py`` checks random networks at several band
heights), but ATen sends small inputs to another implementation (im2col and a GEMM) that rounds
differently, so every band's convolution is kept above ATen's threshold (``ONEDNN_MIN_NUMEL``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ATen's ConvParams::use_mkldnn (aten/src/ATen/native/Convolution.cpp, torch 2.x): a float32 3x3
# convolution of a batch of one goes to oneDNN only when its input has more elements than this;
# smaller inputs take the native im2col path, whose sums round differently from oneDNN's
ONEDNN_MIN_NUMEL = 20480

# the size of a band: the largest tensor one band makes (a convolution's output rows, a window) is
# about this many bytes. The fastest on a quiet machine (BBCU-L x4 at 320x240: 6 rows, 2-5% faster
# than 12 or 24); larger bands lose less when another process holds a core, since every convolution's
# threads meet at its end (measured: docs/kernels.md)
BAND_BYTES = 8 << 20
# a fixed band height (rows of the first stage's input) instead: for tests and measurements
ROWS: int | None = None


class RowConv:
    """A 3x3 'same' convolution computed on a window of its input rows.

    ``conv(window, top, bottom)`` returns the output rows whose 3x3 neighbourhood lies in the window,
    or in the zero padding beyond the image edge where ``top`` (the window starts at the image's
    first row) or ``bottom`` (it ends at the last row) says so: ``len(window) - 2 + top + bottom``
    rows, each computed as the unbanded convolution computes it.
    """

    def __init__(self, conv: nn.Module) -> None:
        self.conv = conv

    def __call__(self, window: Tensor, top: bool, bottom: bool) -> Tensor:
        conv = self.conv
        if type(conv) is nn.Conv2d:  # the padding is the convolution's own: no row is computed to be dropped
            weight, bias = conv.weight, conv.bias
            if top == bottom:
                return F.conv2d(window, weight, bias, padding=(int(top), 1))
            y = F.conv2d(window, weight, bias, padding=1)
        else:  # a module with its own 'same' padding (ThinConv2d): the rows beside a cut are dropped
            y = conv(window)
        rows = y.shape[2]
        return y[:, :, (0 if top else 1):rows - (0 if bottom else 1)]


# post(conv rows, destination, first row): the stage's row-wise step (a pixel shuffle, an activation,
# a residual) from its convolution's rows into the destination, the rows of its output from that row
# (what it returns is ignored)
Post = Callable[[Tensor, Tensor, int], object]


@dataclass(frozen=True)
class Stage:
    conv: RowConv
    post: Post
    channels: int  # of the stage's output
    upscale: int = 1  # output rows (and columns) per convolution row: the pixel shuffle's factor


def can_run(stages: Sequence[Stage], x: Tensor) -> bool:
    """Whether ``run`` computes ``stages`` on ``x`` exactly as the unbanded layers would, in two bands
    or more: a batch of one, NHWC, float32, and bands large enough for oneDNN (else: run unbanded)."""
    if x.ndim != 4 or x.shape[0] != 1 or x.dtype != torch.float32 or x.device.type != "cpu":
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False  # the rows of an NCHW tensor are strided: the convolutions would copy them
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False  # bf16 convolutions: not checked to give the same bits in bands
    return len(_bands(int(x.shape[2]), _band_rows(stages, x))) >= 2


def _band_rows(stages: Sequence[Stage], x: Tensor) -> int:
    """Rows of ``x`` per band: ``ROWS``, or as many as BAND_BYTES allows (one at least), and in any case
    enough that every stage's input window exceeds ONEDNN_MIN_NUMEL."""
    _, c, _, w = (int(s) for s in x.shape)
    narrowest = c * w  # elements in a row of a stage's input
    widest = 0  # bytes a row of x becomes in the largest of a band's tensors
    per_row = 1  # rows of a stage's input per row of x
    for i, stage in enumerate(stages):
        r = stage.upscale
        widest = max(widest, 4 * per_row * w * stage.channels * r * r)
        per_row, w = per_row * r, w * r
        if i + 1 < len(stages):
            narrowest = min(narrowest, stage.channels * w)
    rows = ROWS or max(1, BAND_BYTES // widest)
    return max(rows, ONEDNN_MIN_NUMEL // narrowest + 1)


def _bands(height: int, rows: int) -> list[int]:
    """Where each band of ``height`` rows ends: bands of ``rows`` rows or more, evenly split."""
    k = max(1, height // rows)
    return [(i + 1) * height // k for i in range(k)]


class _Window:
    """A stage's input rows [lo, hi) in a buffer kept from band to band (the halo moved to its top)."""

    def __init__(self, channels: int, width: int) -> None:
        self.buf = torch.empty((1, channels, 0, width), memory_format=torch.channels_last)
        self.lo = self.hi = 0

    def rows(self, a: int, b: int) -> Tensor:
        assert self.lo <= a <= b <= self.hi
        return self.buf[:, :, a - self.lo:b - self.lo]

    def append(self, keep_from: int, count: int) -> Tensor:
        """Drop the rows before ``keep_from``; the view where the next ``count`` rows go."""
        kept = self.hi - keep_from
        need = kept + count
        old = self.buf
        if old.shape[2] < need:
            n, c, _, w = old.shape
            self.buf = torch.empty((n, c, need, w), memory_format=torch.channels_last)
        if kept and (self.buf is not old or keep_from > self.lo):
            # the halo rows to the top (numpy copies overlapping rows correctly)
            np.copyto(nhwc(self.buf[:, :, :kept]), nhwc(old[:, :, keep_from - self.lo:self.hi - self.lo]))
        self.lo, self.hi = keep_from, keep_from + need
        return self.buf[:, :, kept:need]


def nhwc(t: Tensor) -> np.ndarray:
    """A numpy view (N, H, W, C) of an NHWC tensor, for the small steps between a band's convolutions:
    numpy runs them on the calling thread, while each torch operation is an OpenMP region that waits
    for both threads, a scheduler time slice whenever another process holds a core (measured with one
    busy process beside it: a copy of two 1280x64 rows 0.77 ms in torch, 0.014 ms in numpy)."""
    return t.detach().permute(0, 2, 3, 1).numpy()


def run(stages: Sequence[Stage], x: Tensor, out: Tensor) -> Tensor:
    """``out`` = the last stage's output of the stages applied in turn to ``x`` (N = 1, NHWC), computed
    band by band (``can_run`` says when this is exact); returns ``out``."""
    heights, widths = [int(x.shape[2])], [int(x.shape[3])]
    for stage in stages[:-1]:
        heights.append(heights[-1] * stage.upscale)
        widths.append(widths[-1] * stage.upscale)
    # the first stage reads x itself; each later one a window its predecessor fills
    windows = [_Window(s.channels, w) for s, w in zip(stages, widths[1:], strict=False)]
    done = [0] * len(stages)  # per stage: its next convolution row
    for band_end in _bands(heights[0], _band_rows(stages, x)):
        for i, stage in enumerate(stages):
            height = heights[i]
            hi = band_end if i == 0 else windows[i - 1].hi  # the input rows that have arrived
            end = height if hi == height else hi - 1  # the rows whose neighbourhood has arrived
            if end <= done[i]:
                break
            a = max(done[i] - 1, 0)
            win = x[:, :, a:hi] if i == 0 else windows[i - 1].rows(a, hi)
            if hi < height and win.numel() <= ONEDNN_MIN_NUMEL:
                break  # a window this small would leave oneDNN: wait for more rows
            y = stage.conv(win, done[i] == 0, hi == height)
            first, count = done[i] * stage.upscale, (end - done[i]) * stage.upscale
            if i + 1 < len(stages):
                dest = windows[i].append(max(done[i + 1] - 1, 0), count)
            else:
                dest = out[:, :, first:first + count]
            stage.post(y, dest, first)
            done[i] = end
    return out
