"""Input and output formats a newcomer brings: HEIC, 16-bit RGB PNG (16-bit out, PNG or TIFF), a
decompression bomb refused in the service's own words; decoded here, over real HTTP and by the CLI."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from models import imageio
from models.errors import ImageTooLargeError
from tests.helpers import assert_problem
from tests.test_service_store import serve_in_thread
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BIG = 1 << 30
SERVICE_MAX_PIXELS = 4096 * 4096  # the service's default limit (16,777,216)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    a, b, c = (x.astype(np.int32) for x in (a, b, c))
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def png16(samples: np.ndarray, exif: bytes | None = None) -> bytes:
    """A 16-bit PNG of H x W x C uint16 written as an encoder would: each row with another of PNG's
    five filters (none, sub, up, average, paeth), so a decoder must undo every one."""
    h, w, channels = samples.shape
    ctype = {2: 4, 3: 2, 4: 6}[channels]
    bpp = channels * 2
    raw = samples.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    rows = []
    for y in range(h):
        x, up = raw[y], raw[y - 1] if y else np.zeros_like(raw[y])
        left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        kind = y % 5
        predicted = [np.zeros_like(x), left, up, (left + up) // 2, _paeth(left, up, up_left)][kind]
        rows.append(bytes([kind]) + ((x - predicted) % 256).astype(np.uint8).tobytes())
    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    extra = _chunk(b"eXIf", exif) if exif else b""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra
            + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b""))


def ihdr_of(png: bytes) -> tuple[int, int, int, int]:
    """Width, height, bit depth and color type of a PNG file."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    w, h, depth, ctype = struct.unpack(">IIBB", png[16:26])
    return w, h, depth, ctype


def samples16(h: int, w: int, channels: int, seed: int = 0) -> np.ndarray:
    """Smooth 16-bit content with low bytes that differ from pixel to pixel (so 8 bits cannot hold it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([20000 + 300 * x + 200 * y + 1000 * c for c in range(channels)], -1)
    return (base + rng.integers(0, 256, base.shape)).astype(np.uint16)


def heic(w: int = 96, h: int = 64) -> tuple[bytes, np.ndarray]:
    """A HEIC photo made here with pillow-heif, and the pixels it was made from."""
    from pillow_heif import register_heif_opener

    register_heif_opener()
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([128 + 90 * np.sin(x / 9), 128 + 90 * np.cos(y / 7), 128 + 60 * np.sin((x + y) / 13)], -1)
    pixels = rgb.astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="HEIF", quality=95)
    assert buf.getvalue()[4:12] == b"ftypheic"
    return buf.getvalue(), pixels


def bomb_png(w: int = 30000, h: int = 30000) -> bytes:
    """The header of a 30000 x 30000 PNG: 900 M pixels, past Pillow's own bomb limit."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + \
        _chunk(b"IEND", b"")


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_color_png_is_decoded_and_written_with_16_bits(channels: int) -> None:
    a = samples16(23, 41, channels)
    img = imageio.decode(png16(a), max_pixels=BIG)
    assert img.bit_depth == 16 and img.width == 41 and img.height == 23
    planes = [img.pixels] if img.alpha is None else [img.pixels, img.alpha[..., None]]
    decoded = np.rint(np.concatenate(planes, axis=2) * 65535).astype(np.int64)
    assert img.channels == (1 if channels == 2 else 3) and (img.alpha is not None) == (channels in (2, 4))
    np.testing.assert_array_equal(decoded, a)
    png = imageio.encode(img, "png")
    assert ihdr_of(png) == (41, 23, 16, {2: 4, 3: 2, 4: 6}[channels])
    again = imageio.decode(png, max_pixels=BIG)
    np.testing.assert_array_equal(again.pixels, img.pixels)
    import tifffile

    tiff = tifffile.imread(io.BytesIO(imageio.encode(img, "tiff")))
    assert tiff.dtype == np.uint16
    np.testing.assert_array_equal(tiff.reshape(a.shape), a)


def test_16_bit_png_exif_orientation_is_applied_as_pillow_applies_it() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    png = png16(samples16(20, 30, 3), exif=exif.tobytes()[6:])  # eXIf holds the TIFF block alone
    img = imageio.decode(png, max_pixels=BIG)
    assert (img.width, img.height) == (20, 30)
    upright8 = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(png))))
    np.testing.assert_array_equal(np.rint(img.pixels * 65535).astype(np.int64) >> 8, upright8)


def test_8_bit_input_written_as_tiff_stays_8_bit() -> None:
    img = imageio.decode(png16(samples16(10, 12, 3)), max_pixels=BIG)
    eight = img.with_pixels(img.pixels, None)
    eight = type(img)(pixels=eight.pixels, bit_depth=8)
    back = Image.open(io.BytesIO(imageio.encode(eight, "tiff")))
    assert back.format == "TIFF" and back.mode == "RGB" and back.size == (12, 10)


def test_heic_is_decoded() -> None:
    data, pixels = heic()
    img = imageio.decode(data, max_pixels=BIG)
    assert img.source_format == "HEIF" and (img.width, img.height) == (96, 64) and img.channels == 3
    error = np.abs(img.pixels * 255 - pixels.astype(np.float32))
    assert error.mean() < 4  # lossy, but the same picture


def test_avif_is_decoded() -> None:
    _, pixels = heic()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="AVIF", quality=95)
    img = imageio.decode(buf.getvalue(), max_pixels=BIG)
    assert img.source_format == "AVIF" and (img.width, img.height) == (96, 64)
    assert np.abs(img.pixels * 255 - pixels.astype(np.float32)).mean() < 4


def test_a_decompression_bomb_is_refused_with_our_limit() -> None:
    with pytest.raises(ImageTooLargeError) as e:
        imageio.probe(bomb_png(), max_pixels=SERVICE_MAX_PIXELS)
    assert e.value.pixels == 30000 * 30000 and e.value.max_pixels == SERVICE_MAX_PIXELS
    assert str(e.value) == f"image is 900000000 pixels, over the limit of {SERVICE_MAX_PIXELS} pixels"


@pytest.mark.service  # runs `bbcu` in its own process
def test_formats_over_http_and_the_cli(tiny_weights: Path, tmp_path: Path) -> None:
    settings = Settings(weights_dir=tiny_weights, torch_threads=1)
    photo, _ = heic()
    deep = png16(samples16(24, 32, 3, seed=4))
    with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=120) as c:
        r = c.post("/restore", params={"task": "denoise"},
                   files={"image": ("IMG_0001.HEIC", photo, "image/heic")})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png" and Image.open(io.BytesIO(r.content)).size == (96, 64)
        r = c.post("/restore", params={"task": "denoise"}, files={"image": ("deep.png", deep, "image/png")})
        assert r.status_code == 200, r.text
        assert ihdr_of(r.content) == (32, 24, 16, 2)
        r = c.post("/restore", params={"task": "denoise", "format": "tiff"},
                   files={"image": ("deep.png", deep, "image/png")})
        assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
        import tifffile

        tiff = tifffile.imread(io.BytesIO(r.content))
        assert tiff.dtype == np.uint16 and tiff.shape == (24, 32, 3)
        r = c.post("/restore", params={"task": "denoise"},
                   files={"image": ("huge.png", bomb_png(), "image/png")})
        body = assert_problem(r, 413)
        assert body["max_pixels"] == SERVICE_MAX_PIXELS and body["pixels"] == 900_000_000
        assert f"over the limit of {SERVICE_MAX_PIXELS} pixels" in body["detail"]
        assert "bomb" not in body["detail"] and "178956970" not in body["detail"]
        src = tmp_path / "IMG_0001.HEIC"
        src.write_bytes(photo)
        for where, extra in (("local", ["--weights", str(tiny_weights / "tiny_denoise_l.safetensors")]),
                             ("remote", ["--url", url])):
            out = tmp_path / f"{where}.png"
            cli = subprocess.run([sys.executable, "-m", "cli.main", "restore", str(src), "-o", str(out),
                                  "--task", "denoise", *extra], cwd=ROOT, capture_output=True, text=True,
                                 timeout=300)
            assert cli.returncode == 0, cli.stderr
            assert Image.open(out).size == (96, 64) and f"IMG_0001.HEIC -> {out}" in cli.stderr
