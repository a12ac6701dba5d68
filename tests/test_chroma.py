"""A color JPEG's chroma restored at the resolution the file stored it (models.chroma, jpeg_info)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from models import chroma, imageio, jpeg_info
from models.config import deblock_config
from models.degrade import jpeg_bytes
from models.engine import from_network
from models.jpeg_info import JpegInfo
from models.pipeline import restore_image, run_stages
from tests.factories import random_net


def _jpeg(a: np.ndarray, quality: int, subsampling: int = 2, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kw: dict[str, object] = {"quality": quality, "subsampling": subsampling}
    if orientation is not None:
        exif = PILImage.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    PILImage.fromarray(a).save(buf, "JPEG", **kw)  # type: ignore[arg-type]
    return buf.getvalue()


RGB = (np.random.default_rng(0).random((24, 40, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("quality", [1, 5, 10, 12, 13, 25, 40, 41, 50, 75, 90, 95, 100])
def test_the_quality_a_file_was_saved_at_is_read_back(quality: int) -> None:
    info = jpeg_info.of_bytes(_jpeg(RGB, quality))
    assert info == JpegInfo(quality=quality, chroma_step=(2, 2))


def test_chroma_subsampling_in_the_upright_orientation() -> None:
    assert jpeg_info.of_bytes(_jpeg(RGB, 30, subsampling=0)) == JpegInfo(30, (1, 1))
    assert jpeg_info.of_bytes(_jpeg(RGB, 30, subsampling=1)) == JpegInfo(30, (1, 2))  # 4:2:2
    assert jpeg_info.of_bytes(_jpeg(RGB[..., 0], 30)) == JpegInfo(30, (1, 1))        # gray
    # turned by 90 degrees on decoding (EXIF 6): 4:2:2's halved columns become halved rows
    decoded = imageio.decode(_jpeg(RGB, 30, subsampling=1, orientation=6), max_pixels=1 << 20)
    assert decoded.pixels.shape[:2] == (40, 24) and decoded.jpeg == JpegInfo(30, (2, 1))
    # other formats carry none, and new pixels are no longer the file's
    png = io.BytesIO()
    PILImage.fromarray(RGB).save(png, "PNG")
    assert imageio.decode(png.getvalue(), max_pixels=1 << 20).jpeg is None
    assert decoded.with_pixels(decoded.pixels, None).jpeg is None


def test_a_camera_table_reads_as_the_nearest_ijg_quality() -> None:
    table = np.round(jpeg_info.ijg_luma_table(30) * 1.12)  # not libjpeg's: 12% coarser
    assert jpeg_info.estimate_quality(table) == 27  # libjpeg's scale 5000/27 ~ 1.12 x 5000/30
    with pytest.raises(ValueError, match="64 entries"):
        jpeg_info.estimate_quality([1] * 63)


@pytest.mark.parametrize("step,quarter,half", [((2, 2), 10, 30), ((1, 2), 8, 25), ((2, 1), 8, 25),
                                               ((1, 1), 7, 22)])
def test_the_resolution_follows_the_files_compression(step: tuple[int, int], quarter: int, half: int) -> None:
    assert chroma.scale_for(None) == chroma.FULL
    assert chroma.scale_for(JpegInfo(1, step)) == chroma.QUARTER
    assert chroma.scale_for(JpegInfo(quarter, step)) == chroma.QUARTER
    assert chroma.scale_for(JpegInfo(quarter + 1, step)) == chroma.HALF
    assert chroma.scale_for(JpegInfo(half, step)) == chroma.HALF
    assert chroma.scale_for(JpegInfo(half + 1, step)) == chroma.FULL
    assert chroma.scale_for(JpegInfo(100, step)) == chroma.FULL


def _identity(planes: np.ndarray) -> np.ndarray:
    return planes.copy()


def test_half_resolution_returns_a_smooth_chroma_exactly() -> None:
    # chroma linear in x and y: 2x2 averages sit at the blocks' centres, where bilinear
    # upsampling puts them, so away from the last row and column the plane comes back exactly
    yy, xx = np.mgrid[0:30, 0:42].astype(np.float32)
    cb = 0.5 + 0.004 * xx - 0.003 * yy
    ycc = np.stack([np.full_like(cb, 0.5), cb, 0.5 + 0.002 * xx + 0.001 * yy], axis=-1)
    rgb = imageio.ycbcr_to_rgb(ycc)
    got = chroma.restore_chroma(_identity, rgb, ycc[..., :1], chroma.HALF)
    want = imageio.rgb_to_ycbcr(rgb)[..., 1:]
    assert got.shape == (30, 42, 2)
    assert np.abs(got[1:-1, 1:-1] - want[1:-1, 1:-1]).max() < 1e-5


def test_quarter_resolution_follows_the_lumas_edges() -> None:
    # chroma that is a function of the luma (a red object on a gray ground, edges off the 4x4 grid)
    y = np.full((37, 45), 0.3, np.float32)
    y[9:30, 13:26] = 0.7
    cb = 0.5 - 0.25 * (y - 0.3)
    ycc = np.stack([y, cb, 0.5 + 0.5 * (y - 0.3)], axis=-1)
    rgb = imageio.ycbcr_to_rgb(ycc)
    want = imageio.rgb_to_ycbcr(rgb)[..., 1:]
    got = chroma.restore_chroma(_identity, rgb, imageio.rgb_to_ycbcr(rgb)[..., :1], chroma.QUARTER)
    blurred = chroma._up(chroma.box_down(torch.from_numpy(want.transpose(2, 0, 1).copy())[None], 4),
                         4, 37, 45)[0].permute(1, 2, 0).numpy()
    assert got.shape == want.shape
    smear, err = np.abs(blurred - want), np.abs(got - want)
    assert smear.max() > 0.05                   # plain upsampling smears the edges
    assert err.max() < smear.max() / 4 and err.mean() < smear.mean() / 4  # the guided one keeps them


def test_full_resolution_is_the_networks_chroma() -> None:
    net = lambda p: np.clip(p * 0.9 + 0.05, 0, 1).astype(np.float32)  # noqa: E731
    rgb = RGB.astype(np.float32) / 255
    got = chroma.restore_chroma(net, rgb, rgb[..., :1], chroma.FULL)
    np.testing.assert_array_equal(got, imageio.rgb_to_ycbcr(net(rgb))[..., 1:])
    with pytest.raises(ValueError, match="chroma scale"):
        chroma.restore_chroma(net, rgb, rgb[..., :1], 3)


def test_a_decoded_jpeg_takes_its_chroma_path_through_the_pipeline() -> None:
    gray = from_network(random_net(deblock_config(nf=8, depth=3), 21), deblock_config(nf=8, depth=3),
                        backend="float")
    cfg = deblock_config(nf=8, depth=3, channels=3)
    color = from_network(random_net(cfg, 22), cfg, backend="float")
    img = imageio.decode(_jpeg(RGB, 10), max_pixels=1 << 20)
    assert chroma.scale_for(img.jpeg) == chroma.QUARTER

    def run(model, planes: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
        x = torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None]
        return model.restore(x).clamp_(0, 1)[0].permute(1, 2, 0).numpy()

    luma = run(gray, imageio.rgb_to_ycbcr(img.pixels)[..., :1])
    cbcr = chroma.restore_chroma(lambda p: run(color, p), img.pixels, luma, chroma.QUARTER)
    want = imageio.ycbcr_to_rgb(np.concatenate([luma, cbcr], axis=2))
    got = restore_image(gray, img, chroma=color).pixels
    np.testing.assert_allclose(got, want, atol=1e-6)
    full = restore_image(gray, imageio.Image(pixels=img.pixels), chroma=color).pixels
    assert np.abs(full - got).max() > 1e-3  # no file behind it: the full-resolution network
    # a 4:4:4 file of quality 23-30 takes the full-resolution chroma, as a file without a JPEG behind it
    mid = imageio.decode(_jpeg(RGB, 26, subsampling=0), max_pixels=1 << 20)
    assert chroma.scale_for(mid.jpeg) == chroma.FULL and not chroma.color_alone(mid.jpeg)
    np.testing.assert_array_equal(restore_image(gray, mid, chroma=color).pixels,
                                  restore_image(gray, imageio.Image(pixels=mid.pixels), chroma=color).pixels)
    _, [report] = run_stages([gray], mid, chroma=color)
    assert (report.model, report.chroma_model) == (gray.info.name, color.info.name)
    # above quality 30 the color network restores the photo alone, luma included
    for quality, subsampling in ((31, 2), (90, 2), (40, 0)):
        light = imageio.decode(_jpeg(RGB, quality, subsampling), max_pixels=1 << 20)
        assert chroma.color_alone(light.jpeg)
        alone = restore_image(color, light).pixels
        np.testing.assert_array_equal(restore_image(gray, light, chroma=color).pixels, alone)
        both = restore_image(gray, imageio.Image(pixels=light.pixels), chroma=color).pixels
        assert np.abs(alone - both).max() > 1e-3
        out, [report] = run_stages([gray], light, chroma=color)
        assert (report.model, report.chroma_model, report.jpeg_quality) == (color.info.name, None, quality)
        np.testing.assert_array_equal(out.pixels, run_stages([color], light)[0].pixels)


def test_shipped_networks_restore_a_q10_photo_better_than_the_decoder() -> None:
    from models.degrade import to_uint8
    from models.engine import load_chroma_partner, load_for_task
    from models.metrics import psnr

    gt = np.asarray(PILImage.open("samples/scene.png").convert("RGB"))
    img = imageio.decode(jpeg_bytes(gt, 10), max_pixels=1 << 20)
    gray, color = load_for_task("deblock"), load_chroma_partner("deblock")
    decoder_chroma = psnr(to_uint8(restore_image(gray, img).pixels), gt)
    ours = psnr(to_uint8(restore_image(gray, img, chroma=color).pixels), gt)
    assert ours > decoder_chroma + 0.3
