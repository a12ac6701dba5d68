"""How noisy is a photo, and how strongly to denoise it (numpy only, no torch).

``estimate_sigma`` is Immerkaer's fast noise estimator (a 3x3 kernel that cancels smooth image
content and leaves 6 x the noise) computed per 16x16 block, so that texture and edges, which the
whole-image estimate mistakes for noise, can be set aside: the estimate is a low percentile of the
block estimates, calibrated on pure Gaussian noise. Blocks near black or white are skipped (clipping
hides the noise there). Measured on the 68 CBSD68 photos with seeded noise (0..255 scale, rounded
and clipped like a saved image): clean photos give 0.3..7.7, sigma 5 gives 4.8..9.3, sigma 15
gives 13.0..17.2, sigma 25 gives 18.8..26.3; sigma 50 reads 30..49 (clipping removes noise).

``auto_strength`` maps the estimate to the share of the network's change that is kept: nothing at
or below ``SIGMA_CLEAN`` (clean photos come back untouched, and so do most photos with sigma 5
noise, whose texture a denoiser trained on heavier noise would flatten), all of it from
``SIGMA_FULL`` up, linearly in between.
"""

from __future__ import annotations

import numpy as np

BLOCK = 16
PERCENTILE = 10.0
# the largest estimate of a clean CBSD68 photo is 7.7, the smallest of one with sigma 15 noise 13.0
SIGMA_CLEAN = 8.0
SIGMA_FULL = 12.5
# mean levels (0..255) outside which a block is too close to clipping to show its noise
_DARKEST, _BRIGHTEST = 15.0, 240.0
# the 10th percentile of 16x16 block estimates on pure Gaussian noise, as a share of sigma
_CALIBRATION = 0.943
# images up to this many rows x BLOCK are read whole (every CBSD68 photo); taller ones in bands
_ROWS_READ_ALL = 1024 * BLOCK
_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32) / 6.0


def _residual(plane: np.ndarray) -> np.ndarray:
    """The plane convolved with Immerkaer's kernel ('valid' borders): noise with the same sigma."""
    h, w = plane.shape
    out = np.zeros((h - 2, w - 2), np.float32)
    for i in range(3):
        for j in range(3):
            out += _KERNEL[i, j] * plane[i:h - 2 + i, j:w - 2 + j]
    return out


def _bands(height: int) -> list[tuple[int, int]]:
    """Rows to read: all of a small image; spaced bands of whole blocks covering ~1/4 of a large one."""
    if height * BLOCK < _ROWS_READ_ALL:
        return [(0, height)]
    band = 4 * BLOCK + 2
    return [(y, min(y + band, height)) for y in range(0, height - 2, 4 * band)]


def estimate_sigma(pixels: np.ndarray) -> float:
    """The standard deviation of additive white noise in ``pixels`` (H x W x C in 0..1), on 0..255."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[0] < 3 or pixels.shape[1] < 3:
        return 0.0
    variances, levels = [], []
    for y0, y1 in _bands(pixels.shape[0]):  # bands keep the memory small on a 12 MP photo
        x = np.asarray(pixels[y0:y1], np.float32) * np.float32(255.0)
        if x.shape[0] < 3:
            continue
        res = np.stack([_residual(x[..., c]) for c in range(x.shape[2])], axis=-1)
        level = x[1:-1, 1:-1].mean(axis=-1)
        b = BLOCK if min(res.shape[:2]) >= BLOCK else min(res.shape[:2])
        h, w = res.shape[0] // b * b, res.shape[1] // b * b
        variances.append((res[:h, :w] ** 2).reshape(h // b, b, w // b, b, -1).mean(axis=(1, 3, 4)).ravel())
        levels.append(level[:h, :w].reshape(h // b, b, w // b, b).mean(axis=(1, 3)).ravel())
    var, mean = np.concatenate(variances), np.concatenate(levels)
    usable = (mean > _DARKEST) & (mean < _BRIGHTEST)
    pool = var[usable] if usable.sum() >= 8 else var
    return float(np.sqrt(np.percentile(pool, PERCENTILE)) / _CALIBRATION)


def auto_strength(sigma: float) -> float:
    """0 for a clean photo, 1 for a clearly noisy one, linear in between."""
    return float(np.clip((sigma - SIGMA_CLEAN) / (SIGMA_FULL - SIGMA_CLEAN), 0.0, 1.0))


def blend(original: np.ndarray, restored: np.ndarray, strength: float) -> np.ndarray:
    """``original + strength * (restored - original)``: 0 keeps the input, 1 the network's output."""
    if strength >= 1.0:
        return restored
    if strength <= 0.0:
        return original
    return (original + np.float32(strength) * (restored - original)).astype(np.float32)
