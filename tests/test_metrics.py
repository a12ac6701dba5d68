"""PSNR/SSIM of models.metrics (the BBCU paper's protocol) against independently computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import metrics


def test_psnr_identical_is_inf() -> None:
    img = np.random.default_rng(0).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    assert metrics.psnr(img, img) == math.inf
    assert metrics.y_psnr(img, img, border=2) == math.inf
    assert metrics.ssim(img, img) == pytest.approx(1.0)


def test_psnr_known_pair() -> None:
    a = np.zeros((8, 8), np.uint8)
    b = a.copy()
    b[0, 0] = 16  # MSE = 256 / 64 = 4 -> PSNR = 10 log10(65025 / 4)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 4))
    assert metrics.psnr(a, b, border=1) == math.inf  # the only error lies in the cropped border
    c = np.full((8, 8), 10.0)
    assert metrics.psnr(a, c) == pytest.approx(20 * math.log10(255 / 10))


def test_y_psnr_uses_bt601() -> None:
    a = np.zeros((6, 6, 3))
    b = a.copy()
    b[..., 1] = 10.0  # green +10 -> Y + 10 * 128.553 / 255
    dy = 10 * 128.553 / 255
    assert metrics.y_psnr(a, b) == pytest.approx(20 * math.log10(255 / dy))
    np.testing.assert_allclose(metrics.y_channel(np.full((2, 2, 3), 255.0)), 235.0, atol=1e-3)


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM by explicit 11x11 window loops (gaussian sigma 1.5, 'valid'), as Wang et al.'s MATLAB code."""
    t = np.arange(11) - 5
    g = np.exp(-(t**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
            cxy = (w * px * py).sum() - mx * my
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_window_loop() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (16, 18)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)
    assert metrics.ssim(x, y) == pytest.approx(_ssim_reference(x, y), rel=1e-10)
    rgb = np.stack([x, y, x], axis=2)
    noisy = np.stack([y, x, y], axis=2)
    assert metrics.ssim(rgb, noisy) == pytest.approx(_ssim_reference(x, y), rel=1e-10)


def test_shape_mismatch_and_border_errors() -> None:
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4)), np.zeros((4, 4)), border=2)
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
