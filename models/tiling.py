"""Seam-free tiled inference, and the choice of tile size.

Each tile is cut with an overlap of the network's receptive radius, run, and only its core is
kept, so the stitched result equals the whole-image result while only one tile (plus overlap)
lives on the device at a time. The image stays on the host; the output is assembled there.

Tiles split the image evenly (a 640-pixel side with tile 320 gives two 320-pixel tiles, with tile
300 three of 214), so no thin last tile pays a full overlap for a few pixels of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

Progress = Callable[[int, int], None]


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    k = -(-n // tile)
    edges = [i * n // k for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def tile_grid(height: int, width: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    for y0, y1 in _spans(height, tile):
        for x0, x1 in _spans(width, tile):
            yield y0, y1, x0, x1


def count_tiles(height: int, width: int, tile: int) -> int:
    return -(-height // tile) * -(-width // tile)


def redundancy(height: int, width: int, tile: int, radius: int) -> float:
    """Pixels the network computes (tiles with their overlap) per pixel of the image; 1.0: none."""
    def padded(n: int) -> int:
        return sum(min(b + radius, n) - max(a - radius, 0) for a, b in _spans(n, tile))

    return padded(height) * padded(width) / (height * width)


def _largest_padded(n: int, tile: int, radius: int) -> int:
    return max(min(b + radius, n) - max(a - radius, 0) for a, b in _spans(n, tile))


# Measured (benchmarks/tiles.py, CPU seconds on 640x480): a tile's time follows the pixels it computes,
# overlap included, plus ~0.03 CPU-s per tile for denoise (0.64 whole; 0.75 in 2 tiles, overlap 1.06;
# 0.87 in 4, 1.15), while SR x4 costs the same per computed pixel in tiles and whole (12.3-12.6 CPU-s
# per computed 640x480 image in 240..480 tiles, 12.3 whole). So a grid computing at most this
# share more than the least-overlap grid under the budget costs about the same time, in less memory.
OVERLAP_SLACK = 0.05


def choose_tile(height: int, width: int, *, radius: int, bytes_per_pixel: float, memory_bytes: int,
                min_tile: int) -> int:
    """The tile side for an image: the whole image when it fits ``memory_bytes`` (no overlap);
    else, among the grids whose largest tile (overlap included) fits and whose overlap is within
    ``OVERLAP_SLACK`` of the least such overlap, the one whose largest tile takes the least memory;
    ``min_tile`` when nothing fits."""
    fits = memory_bytes / bytes_per_pixel
    if height * width <= fits:
        return max(height, width)
    # every distinct grid: k tiles along one side give a tile side of ceil(side / k)
    sides = {-(-n // k) for n in (height, width) for k in range(1, -(-n // min_tile) + 1)}
    grids = []  # (redundancy, largest padded tile in pixels, side)
    for t in sorted(s for s in sides if s >= min_tile):
        area = _largest_padded(height, t, radius) * _largest_padded(width, t, radius)
        if area <= fits:
            grids.append((redundancy(height, width, t, radius), area, t))
    if not grids:
        return min_tile
    least = min(r for r, _, _ in grids)
    return min((area, r, -t) for r, area, t in grids if r <= least * (1 + OVERLAP_SLACK))[2] * -1


Box = tuple[int, int, int, int]


def _batches(boxes: list[Box], h: int, w: int, radius: int, batch: int) -> Iterator[list[Box]]:
    """Tiles whose padded crops have one shape, ``batch`` at a time (row-major within a shape)."""
    by_shape: dict[tuple[int, int], list[Box]] = {}
    for y0, y1, x0, x1 in boxes:
        shape = (min(y1 + radius, h) - max(y0 - radius, 0), min(x1 + radius, w) - max(x0 - radius, 0))
        by_shape.setdefault(shape, []).append((y0, y1, x0, x1))
    for group in by_shape.values():
        for i in range(0, len(group), batch):
            yield group[i:i + batch]


def run_tiled(fn: Callable[[Tensor], Tensor], x: Tensor, *, scale: int, radius: int, tile: int,
              device: torch.device, progress: Progress | None = None, batch: int = 1) -> Tensor:
    """Apply ``fn`` (NCHW -> NC'(sH)(sW)) to host tensor ``x`` tile by tile.

    With ``batch`` > 1, up to that many tiles of one padded shape go through ``fn`` as one batch
    (fewer, larger launches on a GPU); the result does not depend on the grouping.
    """
    n, _, h, w = x.shape
    total = count_tiles(h, w, tile)
    out: Tensor | None = None
    done = 0
    for group in _batches(list(tile_grid(h, w, tile)), h, w, radius, max(1, batch)):
        pads = [(max(y0 - radius, 0), max(x0 - radius, 0)) for y0, _, x0, _ in group]
        crops = [x[:, :, py0:py0 + (min(y1 + radius, h) - py0), px0:px0 + (min(x1 + radius, w) - px0)]
                 for (py0, px0), (_, y1, _, x1) in zip(pads, group, strict=True)]
        ys = fn(torch.cat(crops).to(device)).to("cpu")
        if out is None:
            out = torch.empty(n, ys.shape[1], h * scale, w * scale, dtype=ys.dtype)
        for k, ((y0, y1, x0, x1), (py0, px0)) in enumerate(zip(group, pads, strict=True)):
            y = ys[k * n:(k + 1) * n]
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                y[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
        done += len(group)
        if progress is not None:
            progress(done, total)
    assert out is not None
    return out
