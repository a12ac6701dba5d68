"""What a JPEG file says about its own compression: the quality it was saved at and how much its
chroma was subsampled. The color deblock picks its chroma path from these (models.chroma).

- ``quality``: the IJG (libjpeg) quality whose scaled standard luma table is nearest to the file's
  (mean absolute difference of the sorted entries, so the table's storage order does not matter).
  Exact for files written by libjpeg, Pillow, ImageMagick and most software; for a camera's own
  tables it is the libjpeg quality of about the same coarseness.
- ``chroma_step``: how many luma rows and columns share one chroma sample, (2, 2) for 4:2:0, (1, 2)
  for 4:2:2 and (1, 1) for 4:4:4, in the orientation of the upright image (EXIF applied).

Torch-free: the decoder (models.imageio) fills it in.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

# the luma quantization table of the JPEG standard (ITU T.81, Annex K.1), which libjpeg scales
_BASE_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)


def ijg_luma_table(quality: int) -> np.ndarray:
    """libjpeg's luma table at ``quality`` 1..100 (jpeg_quality_scaling, baseline-limited to 255)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((_BASE_LUMA * scale + 50) // 100, 1, 255)


_SORTED_TABLES = np.stack([np.sort(ijg_luma_table(q)) for q in range(1, 101)])


def estimate_quality(luma_table: list[int] | np.ndarray) -> int:
    """The IJG quality 1..100 whose luma table is nearest to ``luma_table`` (64 entries)."""
    t = np.sort(np.asarray(luma_table, dtype=np.int64).ravel())
    if t.size != 64:
        raise ValueError(f"a quantization table has 64 entries, got {t.size}")
    err = np.abs(_SORTED_TABLES - t).mean(axis=1)
    return int(np.argmin(err)) + 1


@dataclass(frozen=True)
class JpegInfo:
    """A decoded JPEG's compression: see the module docstring."""

    quality: int
    chroma_step: tuple[int, int]  # (rows, columns) of luma per chroma sample; (1, 1) for gray


def read(im: PILImage.Image, transposed: bool) -> JpegInfo | None:
    """The compression of an opened JPEG (None for other formats or unreadable tables);
    ``transposed``: the EXIF orientation turns the image by 90 degrees."""
    if im.format != "JPEG":
        return None
    tables = getattr(im, "quantization", None)
    if not tables or 0 not in tables:
        return None
    try:
        quality = estimate_quality(tables[0])
    except ValueError:
        return None
    layers = getattr(im, "layer", None) or []
    step = (1, 1)
    if len(layers) >= 3:
        (_, h0, v0, _), (_, h1, v1, _) = layers[0], layers[1]
        if h1 and v1 and h0 % h1 == 0 and v0 % v1 == 0:
            step = (v0 // v1, h0 // h1)
    return JpegInfo(quality=quality, chroma_step=step[::-1] if transposed else step)


def of_bytes(data: bytes) -> JpegInfo | None:
    """read() of a JPEG file's bytes without EXIF rotation (None if not a readable JPEG)."""
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            return read(im, transposed=False)
    except (OSError, ValueError, SyntaxError):
        return None
