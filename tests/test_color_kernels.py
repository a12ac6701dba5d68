"""The C kernels' color conversions: numpy's bits (models.imageio, models.noise) in one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import imageio, kernels, noise
from models.kernels import color
from tests.helpers import missing


@pytest.fixture(autouse=True)
def _built() -> None:
    if not kernels.available():
        missing(kernels.unavailable_reason())


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.int32)


def _planes(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, CbCr and an input photo, with values outside 0..1 (clipped), -0, NaN and neutral chroma."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-0.2, 1.2, (h, w, 1)).astype(np.float32)
    cbcr = rng.uniform(-0.2, 1.2, (h, w, 2)).astype(np.float32)
    y[0, :4, 0] = [-0.0, np.nan, 0.0, 1.0]
    cbcr[0, :4] = 0.5
    return y, cbcr, rng.uniform(0, 1, (h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("strength", [1.0, 0.9, 0.37, 0.0])
@pytest.mark.parametrize("size", [(1, 4), (7, 5), (64, 97)])
def test_rgb_blend_is_numpys(strength: float, size: tuple[int, int]) -> None:
    y, cbcr, photo = _planes(*size, seed=size[1])
    want = noise.blend(photo, imageio.ycbcr_to_rgb(y, cbcr), strength)
    got = color.ycbcr_to_rgb_blend(y, cbcr, photo, strength)
    assert got.shape == (*size, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(_bits(got), _bits(want))
    assert np.isnan(got[0, 1]).all() == (strength > 0)  # a NaN luma stays NaN in every channel
    assert np.signbit(got[0, 0, 1]) == (strength == 1.0)  # np.clip keeps -0 (G = -0 - 0 - 0)


def test_rgb_blend_takes_any_strides() -> None:
    """The chroma path hands over a view of two planes, the luma-only path a slice of YCbCr."""
    y, cbcr, photo = _planes(33, 40, seed=1)
    want = _bits(noise.blend(photo, imageio.ycbcr_to_rgb(y, cbcr), 0.5))
    planes = torch.from_numpy(cbcr.transpose(2, 0, 1).copy())  # 2 x H x W
    as_view = planes.permute(1, 2, 0).numpy()
    ycc = np.concatenate([y, cbcr], axis=2)
    assert not as_view.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(_bits(color.ycbcr_to_rgb_blend(y, as_view, photo, 0.5)), want)
    sliced = color.ycbcr_to_rgb_blend(ycc[..., :1], ycc[..., 1:], photo, 0.5)
    np.testing.assert_array_equal(_bits(sliced), want)


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (120, 77)])
def test_luma_is_numpys(size: tuple[int, int]) -> None:
    rgb = np.random.default_rng(size[0]).uniform(-0.5, 1.5, (*size, 3)).astype(np.float32)
    rgb[0, 0] = [np.nan, 0.0, -0.0]
    got = color.luma(rgb)
    assert got.shape == (*size, 1)
    np.testing.assert_array_equal(_bits(got), _bits(imageio.luma(rgb)))
    np.testing.assert_array_equal(_bits(got), _bits(imageio.rgb_to_ycbcr(rgb)[..., :1]))


def test_thread_count_does_not_change_the_bits() -> None:
    y, cbcr, photo = _planes(301, 64, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = color.ycbcr_to_rgb_blend(y, cbcr, photo, 0.6), color.luma(photo)
        torch.set_num_threads(2)
        two = color.ycbcr_to_rgb_blend(y, cbcr, photo, 0.6), color.luma(photo)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_entries_name_what_does_not_fit() -> None:
    from models.kernels import _bitpacked as ext  # type: ignore[attr-defined]

    y = np.zeros((4, 5), np.float32)
    out = np.zeros((4, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"cb: expected shape \(4, 5\), got \(4, 6\)"):
        ext.ycc_rgb(y, np.zeros((4, 6), np.float32), y, out)
    with pytest.raises(ValueError, match="cr: expected float32, got"):
        ext.ycc_rgb(y, y, np.zeros((4, 5)), out)
    with pytest.raises(ValueError, match="out: expected a C-contiguous writable array"):
        ext.ycc_rgb(y, y, y, out.transpose(1, 0, 2))
    with pytest.raises(ValueError, match=r"original: expected shape \(4, 5, 3\)"):
        ext.ycc_rgb(y, y, y, out, original=np.zeros((4, 5, 4), np.float32), strength=0.5)
    with pytest.raises(ValueError, match="y: expected an array, got None"):
        ext.ycc_rgb(None, y, y, out)
    with pytest.raises(ValueError, match="y: sizes H=0 W=5 out of range"):
        ext.ycc_rgb(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32),
                    np.zeros((0, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"rgb: expected shape \(\*, \*, 3\)"):
        ext.rgb_luma(np.zeros((4, 5, 4), np.float32), y)
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 5\)"):
        ext.rgb_luma(out, np.zeros((5, 4), np.float32))


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (36, 20), (37, 21)])
@pytest.mark.parametrize("s", [2, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_box_down_is_torchs(size: tuple[int, int], s: int, channels: int) -> None:
    """The chroma path's averages: chroma.box_down's bits (avg_pool2d of the edge-padded image)."""
    from models import chroma

    rgb = np.random.default_rng(size[0] * s).uniform(-1, 2, (*size, channels)).astype(np.float32)
    want = chroma.box_down(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None], s)[0].permute(1, 2, 0)
    got = color.box_down(rgb, s)
    assert got.shape == (-(-size[0] // s), -(-size[1] // s), channels)
    np.testing.assert_array_equal(_bits(got), _bits(want.numpy()))


def test_cbcr_planes_are_numpys() -> None:
    rgb = np.random.default_rng(5).uniform(-0.5, 1.5, (31, 17, 3)).astype(np.float32)
    rgb[0, 0] = [np.nan, -0.0, 0.0]
    want = imageio.rgb_to_ycbcr(rgb)[..., 1:].transpose(2, 0, 1)
    got = color.cbcr_planes(rgb)
    assert got.shape == (2, 31, 17) and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(_bits(got), _bits(want))


def test_chroma_entries_name_what_does_not_fit() -> None:
    from models.kernels import _bitpacked as ext  # type: ignore[attr-defined]

    x = np.zeros((5, 6, 3), np.float32)
    with pytest.raises(ValueError, match="factor: expected 1..8, got 0"):
        ext.box_down(x, np.zeros((5, 6, 3), np.float32), factor=0)
    with pytest.raises(ValueError, match=r"out: expected shape \(3, 3, 3\), got \(2, 3, 3\)"):
        ext.box_down(x, np.zeros((2, 3, 3), np.float32), factor=2)
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 5, 6\)"):
        ext.rgb_cbcr(x, np.zeros((5, 6, 2), np.float32))
    with pytest.raises(ValueError, match=r"rgb: expected shape \(\*, \*, 3\)"):
        ext.rgb_cbcr(np.zeros((5, 6, 4), np.float32), np.zeros((2, 5, 6), np.float32))
