"""From a decoded image to a restored image: channel mapping, alpha, tiling.

- A gray image through an RGB network runs as three equal channels and comes back as their mean.
- A color image through the gray (Y) JPEG deblocker: the network restores the full-range BT.601
  luma (the plane JPEG itself stores); the chroma planes are kept as the decoder upsampled them.
- Alpha is resized (bicubic) for super-resolution and kept unchanged otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image as PILImage

from models.engine import DEFAULT_TILE_BYTES, RestorationModel
from models.imageio import Image, rgb_to_ycbcr, ycbcr_to_rgb


def _run(model: RestorationModel, planes: np.ndarray, tile: int | None,
         progress: Callable[[int, int], None] | None, memory_bytes: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None]
    y = model.restore(x, tile=tile, progress=progress, memory_bytes=memory_bytes).clamp_(0.0, 1.0)
    return y[0].permute(1, 2, 0).numpy()


def _resize_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    h, w = alpha.shape
    im = PILImage.fromarray(alpha.astype(np.float32))
    return np.clip(np.asarray(im.resize((w * scale, h * scale), PILImage.Resampling.BICUBIC)), 0, 1)


def restore_image(model: RestorationModel, img: Image, *, tile: int | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  memory_bytes: int = DEFAULT_TILE_BYTES) -> Image:
    """Run ``model`` on ``img`` and return the restored image (same mode and bit depth).

    ``memory_bytes`` is the activation budget that sets the tile size (and on CUDA the tile batch).
    """
    net_c = model.config.in_nc
    px = img.pixels
    if net_c == img.channels:
        out = _run(model, px, tile, progress, memory_bytes)
    elif net_c == 3:  # gray image, color network
        out = _run(model, np.repeat(px, 3, axis=2), tile, progress, memory_bytes).mean(axis=2, keepdims=True)
    else:  # color image, luma network
        ycc = rgb_to_ycbcr(px)
        y = _run(model, ycc[..., :1], tile, progress, memory_bytes)
        s = model.scale
        if s > 1:
            chroma = np.stack([_resize_alpha(ycc[..., i], s) for i in (1, 2)], axis=-1)
        else:
            chroma = ycc[..., 1:]
        out = ycbcr_to_rgb(np.concatenate([y, chroma], axis=2))
    alpha = img.alpha
    if alpha is not None and model.scale > 1:
        alpha = _resize_alpha(alpha, model.scale)
    return img.with_pixels(out.astype(np.float32), alpha)
