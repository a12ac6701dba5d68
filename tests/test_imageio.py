"""Image decoding/encoding and the restore pipeline on real images and every Pillow mode."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from models import imageio
from models.config import deblock_config, denoise_config, sr_config
from models.engine import from_network
from models.errors import ImageDecodeError, ImageTooLargeError
from models.pipeline import restore_image
from tests.factories import random_net

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "benchmarks"
BIG = 10**8


def _png(im: PILImage.Image, fmt: str = "PNG", **opts: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **opts)
    return buf.getvalue()


def _photo(size: tuple[int, int] = (40, 30)) -> PILImage.Image:
    path = DATA / "CSet5" / "butterfly.png"
    if path.exists():
        return PILImage.open(path).convert("RGB").crop((100, 100, 100 + size[0], 100 + size[1]))
    rng = np.random.default_rng(0)
    return PILImage.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_rgb_round_trip_is_lossless_in_png() -> None:
    im = _photo()
    img = imageio.decode(_png(im), max_pixels=BIG)
    assert (img.width, img.height, img.channels, img.bit_depth) == (40, 30, 3, 8)
    back = PILImage.open(io.BytesIO(imageio.encode(img, "png")))
    assert np.array_equal(np.asarray(back), np.asarray(im))


@pytest.mark.parametrize("mode,channels,has_alpha", [
    ("RGBA", 3, True), ("L", 1, False), ("LA", 1, True), ("1", 1, False), ("CMYK", 3, False)])
def test_modes(mode: str, channels: int, has_alpha: bool) -> None:
    im = _photo().convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img = imageio.decode(_png(im, fmt), max_pixels=BIG)
    assert img.channels == channels and (img.alpha is not None) == has_alpha
    out = PILImage.open(io.BytesIO(imageio.encode(img, "png")))
    assert out.mode == {"RGBA": "RGBA", "L": "L", "LA": "LA", "1": "L", "CMYK": "RGB"}[mode]


def test_palette_with_transparency_keeps_alpha() -> None:
    im = _photo().convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16)
    im.info["transparency"] = 0
    img = imageio.decode(_png(im, transparency=0), max_pixels=BIG)
    idx = np.asarray(im)
    assert img.alpha is not None
    assert np.all(img.alpha[idx == 0] == 0.0) and np.all(img.alpha[idx != 0] == 1.0)


def test_16_bit_gray_is_kept_16_bit() -> None:
    a = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16)
    img = imageio.decode(_png(PILImage.fromarray(a)), max_pixels=BIG)
    assert img.bit_depth == 16 and img.channels == 1
    assert np.allclose(img.pixels[..., 0] * 65535, a, atol=0.01)
    back = np.asarray(PILImage.open(io.BytesIO(imageio.encode(img, "png"))))
    assert back.dtype in (np.uint16, np.int32) and np.array_equal(back.astype(np.int64), a)


def test_exif_orientation_is_applied() -> None:
    im = _photo((40, 30))
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img = imageio.decode(_png(im, "JPEG", exif=exif.tobytes(), quality=95), max_pixels=BIG)
    assert (img.width, img.height) == (30, 40)


@pytest.mark.parametrize("data,match", [
    (b"", "empty"), (b"hello world, not an image", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a readable image")])
def test_non_images_get_typed_errors(data: bytes, match: str) -> None:
    with pytest.raises(ImageDecodeError, match=match):
        imageio.decode(data, max_pixels=BIG)


def test_truncated_image_is_a_decode_error() -> None:
    data = _png(_photo((64, 64)))
    with pytest.raises(ImageDecodeError, match="truncated|corrupt|readable"):
        imageio.decode(data[: len(data) // 2], max_pixels=BIG)


def test_pixel_budget() -> None:
    data = _png(_photo((40, 30)))
    with pytest.raises(ImageTooLargeError) as e:
        imageio.decode(data, max_pixels=1000)
    assert e.value.pixels == 1200 and e.value.max_pixels == 1000
    assert imageio.probe(data, max_pixels=BIG) == (40, 30, "PNG")


def test_sr_resizes_alpha_and_keeps_mode() -> None:
    cfg = sr_config(3, "m", nf=8, depth=1)
    model = from_network(random_net(cfg), cfg, backend="float")
    im = _photo((20, 10)).convert("RGBA")
    alpha = np.zeros((10, 20), np.uint8)
    alpha[:, 10:] = 255
    im.putalpha(PILImage.fromarray(alpha))
    out = restore_image(model, imageio.decode(_png(im), max_pixels=BIG))
    assert out.pixels.shape == (30, 60, 3) and out.alpha is not None
    assert out.alpha[:, :25].max() < 0.05 and out.alpha[:, 35:].min() > 0.95


def test_denoise_keeps_alpha_and_gray_images_stay_gray() -> None:
    cfg = denoise_config(nf=8, depth=4)
    model = from_network(random_net(cfg), cfg, backend="float")
    img = imageio.decode(_png(_photo().convert("LA")), max_pixels=BIG)
    out = restore_image(model, img)
    assert out.channels == 1 and out.alpha is not None and np.array_equal(out.alpha, img.alpha)
    # the gray image ran as three equal channels: the same as the mean of the network's output
    x = torch.from_numpy(np.repeat(img.pixels, 3, axis=2).transpose(2, 0, 1).copy())[None]
    ref = model(x).clamp(0, 1)[0].mean(0).numpy()
    assert np.abs(out.pixels[..., 0] - ref).max() < 1e-6


def test_color_jpeg_deblocking_runs_on_luma_and_keeps_chroma() -> None:
    cfg = deblock_config(nf=8, depth=4)
    model = from_network(random_net(cfg), cfg, backend="float")
    img = imageio.decode(_png(_photo(), "JPEG", quality=10), max_pixels=BIG)
    out = restore_image(model, img)
    ycc_in, ycc_out = imageio.rgb_to_ycbcr(img.pixels), imageio.rgb_to_ycbcr(out.pixels)
    y = torch.from_numpy(ycc_in[..., :1].transpose(2, 0, 1).copy())[None]
    ref_y = model(y).clamp(0, 1)[0, 0].numpy()
    inside = (out.pixels > 0.02).all(axis=2) & (out.pixels < 0.98).all(axis=2)  # no RGB clipping
    assert inside.mean() > 0.25
    assert np.abs(ycc_out[..., 0] - ref_y)[inside].max() < 1e-4
    assert np.abs(ycc_out[..., 1:] - ycc_in[..., 1:])[inside].max() < 1e-4


def test_ycbcr_round_trip() -> None:
    rgb = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    assert np.abs(imageio.ycbcr_to_rgb(imageio.rgb_to_ycbcr(rgb)) - rgb).max() < 1e-5


def test_jpeg_output_composites_alpha_over_white() -> None:
    img = imageio.Image(pixels=np.zeros((8, 8, 3), np.float32), alpha=np.zeros((8, 8), np.float32))
    out = np.asarray(PILImage.open(io.BytesIO(imageio.encode(img, "jpeg"))))
    assert out.min() >= 250
    with pytest.raises(ValueError, match="unsupported output format"):
        imageio.encode(img, "bmp")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff"])
def test_exif_and_icc_are_kept_with_orientation_normalised(fmt: str) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = PILImage.Exif()
    exif[0x010F] = "BBCU test camera"  # Make
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise on display
    src = _png(_photo((40, 30)), "JPEG", exif=exif.tobytes(), icc_profile=icc, quality=95)
    out = PILImage.open(io.BytesIO(imageio.encode(imageio.decode(src, max_pixels=BIG), fmt)))
    kept = out.getexif()
    assert out.size == (30, 40) and kept[0x010F] == "BBCU test camera" and kept[0x0112] == 1
    assert out.info.get("icc_profile") == icc


def test_quality_sets_the_jpeg_size() -> None:
    img = imageio.decode(_png(_photo((64, 64))), max_pixels=BIG)
    sizes = [len(imageio.encode(img, "jpeg", quality=q)) for q in (30, 60, 95)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[2] / 2
    assert len(imageio.encode(img, "jpeg")) == sizes[2]  # 95 is the default


def test_color_conversions_split_and_whole_agree_bitwise() -> None:
    rng = np.random.default_rng(5)
    px = rng.random((31, 47, 3), dtype=np.float32)
    ycc = imageio.rgb_to_ycbcr(px)
    np.testing.assert_array_equal(imageio.luma(px), ycc[..., :1])
    back = imageio.ycbcr_to_rgb(ycc)
    np.testing.assert_array_equal(imageio.ycbcr_to_rgb(ycc[..., :1], ycc[..., 1:].copy()), back)
    np.testing.assert_allclose(back, px, atol=2e-6)  # full range: the inverse of the forward
    wide = (rng.random((5, 6, 3)) * 1.6 - 0.3).astype(np.float32)
    out = imageio.ycbcr_to_rgb(wide)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0  # clipped
