"""A color photo's conversions around a luma network in the C kernels: the luma of the input, and
RGB from the restored YCbCr planes blended with the input, with the bits of ``models.imageio``'s
``luma`` and ``ycbcr_to_rgb`` and of ``models.noise.blend`` (the same float32 operations in the same
order), each in one pass on the kernels' threads where numpy makes several single-threaded passes
over a 1080p photo's 25 MB. Without the extension, numpy's own."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch

from models import imageio, kernels, noise


def _ext() -> ModuleType | None:
    """The built extension, or None (the callers then take numpy's or torch's own path)."""
    if not kernels.available():
        return None
    from models.kernels import _bitpacked  # type: ignore[attr-defined]

    return _bitpacked


def _plane(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """``imageio.luma(rgb)``: the Y plane (H x W x 1) of float32 RGB pixels (H x W x 3)."""
    ext = _ext()
    if ext is None or rgb.dtype != np.float32:
        return imageio.luma(rgb)
    out = np.empty(rgb.shape[:2], dtype=np.float32)
    ext.rgb_luma(_plane(rgb), out, threads=torch.get_num_threads())
    return out[..., None]


def ycbcr_to_rgb_blend(y: np.ndarray, cbcr: np.ndarray, original: np.ndarray, strength: float) -> np.ndarray:
    """``noise.blend(original, imageio.ycbcr_to_rgb(y, cbcr), strength)`` for the Y plane ``y``
    (H x W x 1) and ``cbcr`` (H x W x 2, any strides); ``original`` (H x W x 3) is read only when
    ``0 < strength < 1``."""
    ext = _ext()
    if ext is None or strength <= 0.0:
        return noise.blend(original, imageio.ycbcr_to_rgb(y, cbcr), strength)
    blend = strength < 1.0
    out = np.empty(y.shape[:2] + (3,), dtype=np.float32)
    ext.ycc_rgb(_plane(y[..., 0]), _plane(cbcr[..., 0]), _plane(cbcr[..., 1]), out,
                original=_plane(original) if blend else None, strength=strength if blend else 1.0,
                threads=torch.get_num_threads())
    return out


def box_down(rgb: np.ndarray, s: int) -> np.ndarray:
    """``models.chroma.box_down`` of an H x W x C image as an H/s x W/s x C image (sizes rounded up,
    the last row and column repeated): torch's avg_pool2d bits. Needs the extension."""
    ext = _ext()
    if ext is None:
        raise RuntimeError(f"the C kernels are not available: {kernels.unavailable_reason()}")
    h, w, c = rgb.shape
    out = np.empty((-(-h // s), -(-w // s), c), dtype=np.float32)
    ext.box_down(_plane(rgb), out, factor=s, threads=torch.get_num_threads())
    return out


def cbcr_planes(rgb: np.ndarray) -> np.ndarray:
    """The Cb and Cr of ``imageio.rgb_to_ycbcr(rgb)`` (H x W x 3) as two planes (2 x H x W)."""
    ext = _ext()
    if ext is None:
        return np.ascontiguousarray(imageio.rgb_to_ycbcr(rgb)[..., 1:].transpose(2, 0, 1))
    out = np.empty((2,) + rgb.shape[:2], dtype=np.float32)
    ext.rgb_cbcr(_plane(rgb), out, threads=torch.get_num_threads())
    return out
