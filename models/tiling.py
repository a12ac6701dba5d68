"""Seam-free tiled inference.

Each tile is cut with an overlap of the network's receptive radius, run, and only its core is
kept, so the stitched result equals the whole-image result while only one tile (plus overlap)
lives on the device at a time. The image stays on the host; the output is assembled there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

Progress = Callable[[int, int], None]


def tile_grid(height: int, width: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            yield y0, min(y0 + tile, height), x0, min(x0 + tile, width)


def count_tiles(height: int, width: int, tile: int) -> int:
    return -(-height // tile) * -(-width // tile)


def run_tiled(fn: Callable[[Tensor], Tensor], x: Tensor, *, scale: int, radius: int, tile: int,
              device: torch.device, progress: Progress | None = None) -> Tensor:
    """Apply ``fn`` (NCHW -> NC'(sH)(sW)) to host tensor ``x`` tile by tile."""
    n, _, h, w = x.shape
    total = count_tiles(h, w, tile)
    out: Tensor | None = None
    for i, (y0, y1, x0, x1) in enumerate(tile_grid(h, w, tile)):
        py0, py1 = max(y0 - radius, 0), min(y1 + radius, h)
        px0, px1 = max(x0 - radius, 0), min(x1 + radius, w)
        y = fn(x[:, :, py0:py1, px0:px1].to(device)).to("cpu")
        if out is None:
            out = torch.empty(n, y.shape[1], h * scale, w * scale, dtype=y.dtype)
        oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
        out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
            y[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
        if progress is not None:
            progress(i + 1, total)
    assert out is not None
    return out
