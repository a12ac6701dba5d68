"""Degradations and colour conversions of the BBCU evaluation protocol (numpy, no torch).

Xia et al., "Basic Binary Convolution Unit for Binarized Image Restoration Network", ICLR 2023,
evaluate with the conventions of the SR/denoising literature; this module reproduces them:

- ``imresize``: MATLAB-compatible bicubic resize (Keys cubic, a = -0.5), antialiased when
  downsampling (the kernel is stretched by 1/scale), symmetric index padding at the borders.
- ``add_gaussian_noise``: AWGN with a numpy seed, added in float and not clipped.
- ``jpeg``: JPEG encoding with Pillow. Pillow passes the quality to libjpeg's
  ``jpeg_set_quality``, which clamps quality <= 0 to 1, so quality 0 gives the same bytes as 1.
- BT.601 ``rgb_to_ycbcr`` / ``ycbcr_to_rgb`` (studio range, MATLAB's rgb2ycbcr) and the full-range
  JFIF luma ``rgb_to_luma`` (what JPEG itself and 8-bit grayscale conversions use).

Images are float arrays in [0, 1], shaped (H, W) or (H, W, C), unless a function says otherwise.
"""

from __future__ import annotations

import io
import math

import numpy as np
from numpy.typing import NDArray
from PIL import Image

FloatArray = NDArray[np.float64]
_A = -0.5  # Keys' cubic parameter used by MATLAB


def cubic(x: NDArray[np.floating]) -> FloatArray:
    """MATLAB's bicubic kernel (Keys, a = -0.5)."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (_A + 2) * ax3 - (_A + 3) * ax2 + 1
    far = _A * ax3 - 5 * _A * ax2 + 8 * _A * ax - 4 * _A
    return np.where(ax <= 1, near, np.where(ax <= 2, far, 0.0))


def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> FloatArray:
    """The (out_len, in_len) matrix that resizes one axis as MATLAB's ``imresize`` does.

    Output pixel u (1-based) samples input position x = u / scale + (1 - 1 / scale) / 2. When
    downsampling with antialiasing the kernel becomes scale * cubic(scale * t) with width 4 / scale.
    Each row is normalised to sum to 1; indices beyond the border are mirrored (symmetric padding:
    ..., 2, 1 | 1, 2, ..., n | n, n-1, ...).
    """
    if in_len < 1 or out_len < 1 or scale <= 0:
        raise ValueError(f"invalid resize: {in_len} -> {out_len} at scale {scale}")
    shrink = antialias and scale < 1
    width = 4.0 / scale if shrink else 4.0
    u = np.arange(1, out_len + 1, dtype=np.float64)
    x = u / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(x - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    dist = x[:, None] - idx
    w = scale * cubic(scale * dist) if shrink else cubic(dist)
    w /= w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.repeat(np.arange(out_len), taps)
    np.add.at(mat, (rows, src.ravel()), w.ravel())
    return mat


def imresize(img: NDArray[np.floating], scale: float | None = None,
             size: tuple[int, int] | None = None, antialias: bool = True) -> FloatArray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` on a float image (no rounding or clipping).

    Give ``scale`` (output size ceil(in * scale)) or ``size`` = (height, width); with ``size`` the
    per-axis scale is out / in, as MATLAB does. Rows are resized first, then columns (MATLAB's
    order when both scales are equal).
    """
    a = np.asarray(img, dtype=np.float64)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    h, w = a.shape[:2]
    if size is None:
        if scale is None:
            raise ValueError("give scale or size")
        size = (math.ceil(h * scale), math.ceil(w * scale))
        sh = sw = float(scale)
    else:
        sh, sw = size[0] / h, size[1] / w
    mh = resize_matrix(h, size[0], sh, antialias)
    mw = resize_matrix(w, size[1], sw, antialias)
    if sh <= sw:
        out = np.tensordot(mh, a, axes=(1, 0))
        out = np.moveaxis(np.tensordot(mw, out, axes=(1, 1)), 0, 1)
    else:
        out = np.moveaxis(np.tensordot(mw, a, axes=(1, 1)), 0, 1)
        out = np.tensordot(mh, out, axes=(1, 0))
    return out


def to_uint8(img: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Round a [0, 1] float image to 8 bits, as saving to PNG does."""
    return np.clip(np.round(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def to_float(img: NDArray[np.uint8]) -> FloatArray:
    return np.asarray(img, dtype=np.float64) / 255.0


def bicubic_lr(hr: NDArray[np.uint8], scale: int) -> NDArray[np.uint8]:
    """The protocol's LR image: HR cropped to a multiple of ``scale``, MATLAB bicubic down, 8 bits."""
    h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
    crop = hr[:h, :w]
    return to_uint8(imresize(to_float(crop), size=(h // scale, w // scale)))


def add_gaussian_noise(img: NDArray[np.floating], sigma: float, seed: int | None = 0,
                       rng: np.random.Generator | None = None) -> FloatArray:
    """``img + N(0, sigma / 255)`` in float, NOT clipped (the denoising protocol).

    With ``seed`` the noise is ``np.random.seed(seed); np.random.normal(...)`` (the legacy global
    generator, as the KAIR test scripts do, but through a private ``RandomState``); pass ``rng``
    for a Generator instead.
    """
    a = np.asarray(img, dtype=np.float64)
    if rng is not None:
        noise = rng.normal(0.0, sigma / 255.0, a.shape)
    else:
        noise = np.random.RandomState(seed).normal(0.0, sigma / 255.0, a.shape)
    return a + noise


def jpeg_bytes(img: NDArray[np.uint8], quality: int) -> bytes:
    """An 8-bit gray (H, W) or RGB (H, W, 3) image as a JPEG file written by Pillow (color: 4:2:0).

    ``quality`` 0..100; libjpeg clamps 0 to 1, so 0 and 1 are the same encoding.
    """
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 0..100, got {quality}")
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"jpeg expects uint8, got {a.dtype}")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode_jpeg(data: bytes, gray: bool) -> NDArray[np.uint8]:
    """The 8-bit gray (H, W) or RGB (H, W, 3) pixels of a JPEG file, decoded by Pillow."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)


def jpeg(img: NDArray[np.uint8], quality: int) -> NDArray[np.uint8]:
    """Encode and decode an 8-bit gray (H, W) or RGB (H, W, 3) image as JPEG with Pillow (jpeg_bytes)."""
    return decode_jpeg(jpeg_bytes(img, quality), gray=np.asarray(img).ndim == 2)


_YCC = np.array([[65.481, 128.553, 24.966],
                 [-37.797, -74.203, 112.0],
                 [112.0, -93.786, -18.214]], dtype=np.float64) / 255.0
_YCC_OFF = np.array([16.0, 128.0, 128.0]) / 255.0


def rgb_to_ycbcr(img: NDArray[np.floating]) -> FloatArray:
    """BT.601 studio-range YCbCr of an RGB image in [0, 1] (MATLAB ``rgb2ycbcr``), in [0, 1]."""
    a = np.asarray(img, dtype=np.float64)
    return a @ _YCC.T + _YCC_OFF


def rgb_to_y(img: NDArray[np.floating]) -> FloatArray:
    """The BT.601 Y channel in [0, 1]: (16 + 65.481 R + 128.553 G + 24.966 B) / 255 for RGB in [0, 1]."""
    a = np.asarray(img, dtype=np.float64)
    return a @ _YCC[0] + _YCC_OFF[0]


def ycbcr_to_rgb(img: NDArray[np.floating]) -> FloatArray:
    """Inverse of :func:`rgb_to_ycbcr`."""
    a = np.asarray(img, dtype=np.float64)
    return (a - _YCC_OFF) @ np.linalg.inv(_YCC).T


def rgb_to_luma(img: NDArray[np.floating]) -> FloatArray:
    """Full-range JFIF/BT.601 luma 0.299 R + 0.587 G + 0.114 B (8-bit grayscale conversion)."""
    a = np.asarray(img, dtype=np.float64)
    return a @ np.array([0.299, 0.587, 0.114])
