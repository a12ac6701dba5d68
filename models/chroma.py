"""The chroma of a color JPEG photo's deblock, restored at the resolution the JPEG stored it.

A color photo's deblock restores the luma with the gray network and takes Cb and Cr from the color
network (models.pipeline). Most JPEGs keep their chroma at half resolution (4:2:0), so the color
network has no more chroma detail to find at full resolution than at half: run on a 2x2-averaged
copy of the photo, as the encoder averaged its chroma, it restores that chroma as well or better
for a quarter of the work. Heavily compressed photos (low quality) keep even less chroma: there it
runs at a quarter of the resolution and a guided filter (He and Sun's fast guided filter, the
restored luma as the guide) brings the chroma back to full size along the luma's edges. Above a
quality of 30 (4:2:0; 25 for 4:2:2, 22 for 4:4:4) the full-resolution network restores the chroma
best, and above 30 (any subsampling) the color network restores the whole photo alone
(``color_alone``): its luma is within 0.04 dB (RGB PSNR) of the gray network's there, and the photo
costs one network instead of two. docs/engine.md ("Images") has the measurements behind the
thresholds (80 held-out photos, not the test set, and CBSD68).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models import kernels
from models.imageio import rgb_to_ycbcr
from models.jpeg_info import JpegInfo
from models.kernels import color

FULL, HALF, QUARTER = 1, 2, 4
# by luma pixels per chroma sample (4:2:0, 4:2:2, 4:4:4): the highest quality that takes the
# quarter-resolution path, and the highest that takes half resolution (above: full resolution)
MAX_QUALITY = {4: (10, 30), 2: (8, 25), 1: (7, 22)}
ALONE_ABOVE = 30          # above this JPEG quality the color network runs alone (color_alone)
GUIDE_RADIUS = 1          # the guided filter's window at quarter resolution (3x3)
GUIDE_EPS = 1e-4          # its regulariser, for planes in 0..1

Planes = Callable[[np.ndarray], np.ndarray]  # the color network: H x W x 3 -> H x W x 3, in 0..1


def scale_for(jpeg: JpegInfo | None) -> int:
    """The resolution divisor for the color network on this photo: by the JPEG's quality and chroma
    subsampling (a 4:4:4 file's chroma too keeps no more detail than the network restores at half
    resolution below quality 22); FULL without a JPEG behind the pixels (another format, or
    pixels already restored)."""
    if jpeg is None:
        return FULL
    rows, cols = jpeg.chroma_step
    quarter, half = MAX_QUALITY.get(rows * cols, MAX_QUALITY[4])
    if jpeg.quality <= quarter:
        return QUARTER
    return HALF if jpeg.quality <= half else FULL


def color_alone(jpeg: JpegInfo | None) -> bool:
    """Whether the color network restores this photo by itself, luma included, instead of beside the
    gray network: a JPEG above quality ALONE_ABOVE. Not for pixels with no JPEG behind them, whose
    compression is unknown (at quality 10 the gray network's luma is 0.19 dB better)."""
    return jpeg is not None and jpeg.quality > ALONE_ABOVE


def _tensor(planes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None]


def box_down(x: torch.Tensor, s: int) -> torch.Tensor:
    """s x s averages, the last row and column repeated up to a multiple of s."""
    h, w = x.shape[-2:]
    if h % s or w % s:  # (the padded copy, when nothing pads, costs more than the averages)
        x = F.pad(x, (0, -w % s, 0, -h % s), mode="replicate")
    return F.avg_pool2d(x, s)


def _up(x: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)[..., :h, :w]


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Means over (2r+1)^2 windows, over the part inside the image at the borders."""
    k = 2 * r + 1
    x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, r), count_include_pad=False)
    return F.avg_pool2d(x, (k, 1), stride=1, padding=(r, 0), count_include_pad=False)


def guided_upsample(guide: torch.Tensor, low: torch.Tensor, s: int, r: int = GUIDE_RADIUS,
                    eps: float = GUIDE_EPS) -> torch.Tensor:
    """``low`` (N x C x h x w) brought to the size of ``guide`` (N x 1 x H x W, h = ceil(H / s)):
    each channel as a local linear function of the guide, fitted at the low resolution against the
    guide's s x s averages; the functions' coefficients are upsampled and applied to the guide."""
    h, w = guide.shape[-2:]
    g = box_down(guide, s)
    mg, mp = _box(g, r), _box(low, r)
    a = (_box(g * low, r) - mg * mp) / (_box(g * g, r) - mg * mg + eps)
    b = mp - a * mg
    return _up(_box(a, r), s, h, w) * guide + _up(_box(b, r), s, h, w)


def restore_chroma(network: Planes, rgb: np.ndarray, luma: np.ndarray, scale: int) -> np.ndarray:
    """Cb and Cr (H x W x 2, a view of two planes below FULL) of ``rgb`` (H x W x 3) as the color
    network restores them at 1/``scale`` resolution; ``luma`` (H x W x 1, the restored luma) guides
    the quarter path."""
    if scale == FULL:
        return rgb_to_ycbcr(network(rgb))[..., 1:]
    if scale not in (HALF, QUARTER):
        raise ValueError(f"chroma scale must be {FULL}, {HALF} or {QUARTER}, got {scale}")
    h, w = rgb.shape[:2]
    with torch.no_grad():
        if kernels.available():  # the averages and the planes in one pass each, the same bits
            small = color.box_down(rgb, scale)
        else:  # a channels_last view of the photo: no 25 MB transposed copy
            pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
            small = box_down(pixels, scale)[0].permute(1, 2, 0).numpy()
        cbcr = torch.from_numpy(color.cbcr_planes(network(small)))[None]
        if scale == HALF:
            full = _up(cbcr, HALF, h, w)
        else:
            full = guided_upsample(_tensor(luma.astype(np.float32, copy=False)), cbcr, QUARTER)
    return full[0].permute(1, 2, 0).numpy()
