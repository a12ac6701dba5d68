"""MATLAB-compatible imresize, noise, JPEG and colour conversions of models.degrade (BBCU protocol)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import degrade


def _keys(t: float) -> float:
    """Keys' cubic (a = -0.5) written out by hand, independently of models.degrade.cubic."""
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def _matlab_1d(v: list[float], out_len: int) -> list[float]:
    """A scalar re-derivation of MATLAB imresize on one row (loops, symmetric padding)."""
    n = len(v)
    s = out_len / n
    aa = s < 1
    width = 4 / s if aa else 4
    res = []
    for u in range(1, out_len + 1):
        x = u / s + 0.5 * (1 - 1 / s)
        left = math.floor(x - width / 2)
        acc, wsum = 0.0, 0.0
        for j in range(left, left + math.ceil(width) + 2):
            w = s * _keys(s * (x - j)) if aa else _keys(x - j)
            k = j
            while k < 1 or k > n:  # symmetric: 0 -> 1, -1 -> 2, n+1 -> n
                k = 1 - k if k < 1 else 2 * n + 1 - k
            acc += w * v[k - 1]
            wsum += w
        res.append(acc / wsum)
    return res


def test_cubic_kernel_values() -> None:
    got = degrade.cubic(np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5]))
    want = [1.0, 0.8671875, 0.2265625, 0.0, -0.0703125, -0.0234375, 0.0, 0.0]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_upsample_two_pixels_matches_hand_derivation() -> None:
    # out[0]: x = 0.75, taps at 1-based positions -1..2 mirror to values 1, 0, 0, 1 with weights
    # cubic(1.75), cubic(0.75), cubic(0.25), cubic(1.25) = -0.0234375, 0.2265625, 0.8671875, -0.0703125
    out = degrade.imresize(np.array([[0.0, 1.0]]), scale=2)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[0], [-0.09375, 0.203125, 0.796875, 1.09375], atol=1e-12)
    np.testing.assert_allclose(out[0], out[1])


@pytest.mark.parametrize(("n", "m"), [(7, 3), (12, 4), (9, 27), (10, 5), (6, 13)])
def test_imresize_rows_match_scalar_reference(n: int, m: int) -> None:
    rng = np.random.default_rng(n * m)
    v = rng.random(n)
    got = degrade.imresize(np.tile(v, (3, 1)), size=(3, m))
    np.testing.assert_allclose(got[1], _matlab_1d(list(v), m), atol=1e-12)


def test_imresize_constant_linear_and_antialias() -> None:
    img = np.full((12, 18, 3), 0.3)
    np.testing.assert_allclose(degrade.imresize(img, size=(4, 6)), 0.3, atol=1e-12)
    ramp = np.tile(np.arange(32, dtype=np.float64), (4, 1))
    up = degrade.imresize(ramp, scale=2)
    # interior samples of a linear ramp stay on the line (Keys' cubic reproduces linear functions)
    x = (np.arange(1, 65) / 2 + 0.25) - 1
    np.testing.assert_allclose(up[0, 6:-6], x[6:-6], atol=1e-9)
    # antialiasing: a Nyquist checkerboard averages to grey when downsampled, not aliased
    checker = (np.indices((32, 32)).sum(axis=0) % 2).astype(np.float64)
    down = degrade.imresize(checker, size=(16, 16))
    assert np.abs(down[2:-2, 2:-2] - 0.5).max() < 0.02
    # the antialiased kernel is stretched by 1/scale: 8 taps per output pixel at x0.5, 4 without
    mat = degrade.resize_matrix(32, 16, 0.5)
    plain = degrade.resize_matrix(32, 16, 0.5, antialias=False)
    assert (np.count_nonzero(mat[5]), np.count_nonzero(plain[5])) == (8, 4)
    np.testing.assert_allclose(mat.sum(axis=1), 1.0)


def test_imresize_x3_shape_and_bicubic_lr() -> None:
    hr = (np.random.default_rng(0).random((31, 20, 3)) * 255).astype(np.uint8)
    lr = degrade.bicubic_lr(hr, 3)
    assert lr.shape == (10, 6, 3) and lr.dtype == np.uint8
    assert degrade.imresize(np.zeros((10, 6)), scale=3).shape == (30, 18)
    with pytest.raises(ValueError):
        degrade.imresize(np.zeros((2, 2, 2, 2)), scale=2)


def test_noise_is_seeded_unclipped_and_scaled() -> None:
    img = np.zeros((200, 200, 3))
    a = degrade.add_gaussian_noise(img, 25, seed=0)
    b = degrade.add_gaussian_noise(img, 25, seed=0)
    np.testing.assert_array_equal(a, b)
    np.random.seed(0)
    np.testing.assert_array_equal(a, np.random.normal(0, 25 / 255, img.shape))
    assert a.min() < 0  # not clipped
    assert abs(a.std() - 25 / 255) < 0.002
    assert not np.array_equal(a, degrade.add_gaussian_noise(img, 25, seed=1))


def test_jpeg_quality_zero_equals_one_and_degrades() -> None:
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(128, 40, (64, 64)), 0, 255).astype(np.uint8)
    q0, q1, q50 = degrade.jpeg(img, 0), degrade.jpeg(img, 1), degrade.jpeg(img, 50)
    np.testing.assert_array_equal(q0, q1)
    err = [np.abs(x.astype(float) - img).mean() for x in (q0, q50, degrade.jpeg(img, 95))]
    assert err[0] > err[1] > err[2]
    assert degrade.jpeg(np.zeros((16, 16, 3), np.uint8), 10).shape == (16, 16, 3)
    with pytest.raises(ValueError):
        degrade.jpeg(img, 101)


def test_ycbcr_bt601_values_and_roundtrip() -> None:
    white, black = np.ones(3), np.zeros(3)
    np.testing.assert_allclose(degrade.rgb_to_ycbcr(white) * 255, [235, 128, 128], atol=1e-3)
    np.testing.assert_allclose(degrade.rgb_to_ycbcr(black) * 255, [16, 128, 128], atol=1e-9)
    red = np.array([1.0, 0.0, 0.0])
    assert degrade.rgb_to_y(red) * 255 == pytest.approx(16 + 65.481)
    img = np.random.default_rng(2).random((5, 4, 3))
    np.testing.assert_allclose(degrade.ycbcr_to_rgb(degrade.rgb_to_ycbcr(img)), img, atol=1e-12)
    assert degrade.rgb_to_luma(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
