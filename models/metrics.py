"""PSNR and SSIM as the BBCU paper (Xia et al., ICLR 2023) and BasicSR/KAIR compute them (numpy).

- ``psnr``: on arrays in 0..255 (float or uint8), optional border crop; identical inputs give inf.
- ``ssim``: Wang et al. with an 11x11 gaussian window (sigma 1.5), C1 = (0.01 * 255)^2,
  C2 = (0.03 * 255)^2, 'valid' filtering, averaged over channels (MATLAB ``ssim_index`` / BasicSR).
- ``y_psnr`` / ``y_ssim``: on the BT.601 Y channel of RGB images given in 0..255 (not rounded).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from models.degrade import rgb_to_y

Array = NDArray[np.generic]


def _crop(a: NDArray[np.float64], border: int) -> NDArray[np.float64]:
    return a[border:-border, border:-border] if border > 0 else a


def _pair(a: Array, b: Array, border: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    if border < 0 or 2 * border >= min(x.shape[:2]):
        raise ValueError(f"border {border} too large for an image of shape {x.shape}")
    return _crop(x, border), _crop(y, border)


def psnr(a: Array, b: Array, border: int = 0, peak: float = 255.0) -> float:
    """10 log10(peak^2 / MSE) over all pixels and channels after cropping ``border`` pixels."""
    x, y = _pair(a, b, border)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> NDArray[np.float64]:
    """The 1-D normalised gaussian whose outer product is the SSIM window."""
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(t * t) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(a: NDArray[np.float64], g: NDArray[np.float64]) -> NDArray[np.float64]:
    """Separable 'valid' correlation of a 2-D array with outer(g, g)."""
    rows = np.lib.stride_tricks.sliding_window_view(a, g.size, axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, g.size, axis=1) @ g


def _ssim_channel(x: NDArray[np.float64], y: NDArray[np.float64], peak: float) -> float:
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    g = gaussian_window()
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mx * mx
    syy = _filter_valid(y * y, g) - my * my
    sxy = _filter_valid(x * y, g) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def ssim(a: Array, b: Array, border: int = 0, peak: float = 255.0) -> float:
    """Mean SSIM (gaussian 11x11, sigma 1.5), averaged over channels, after a border crop."""
    x, y = _pair(a, b, border)
    if min(x.shape[:2]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels, got {x.shape[:2]}")
    if x.ndim == 2:
        return _ssim_channel(x, y, peak)
    return float(np.mean([_ssim_channel(x[..., c], y[..., c], peak) for c in range(x.shape[2])]))


def y_channel(img: Array) -> NDArray[np.float64]:
    """BT.601 Y in 0..255 of an RGB image in 0..255 (gray images are returned as they are)."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 2 or a.shape[2] == 1:
        return a.reshape(a.shape[:2])
    return rgb_to_y(a / 255.0) * 255.0


def y_psnr(a: Array, b: Array, border: int = 0) -> float:
    return psnr(y_channel(a), y_channel(b), border)


def y_ssim(a: Array, b: Array, border: int = 0) -> float:
    return ssim(y_channel(a), y_channel(b), border)
