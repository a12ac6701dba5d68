"""Decoding and encoding images: the accepted input formats in every mode, alpha, EXIF orientation, bit depth.

Pixels are held as float32 H x W x C arrays in 0..1 with C = 1 (gray) or 3 (RGB); an alpha plane,
if any, separately. Torch-free, so the HTTP front end can use ``probe`` to check uploads.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import warnings
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from models import depth16, input_formats, jpeg_info
from models.errors import ImageDecodeError, ImageTooLargeError
from models.jpeg_info import JpegInfo
from models.vocab import STILL_FORMATS, format_of

_PIL_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG", "tiff": "TIFF", "gif": "GIF"}
_DEEP_FORMATS = ("PNG", "TIFF")  # the output formats that keep 16 bits per sample
_ORIENTATION = 0x0112
# zlib level 1: at 2000x1500 about 3x faster than Pillow's default 6 for files ~14% larger
PNG_COMPRESS_LEVEL = 1
DEFAULT_QUALITY = 95
_BOMB_SIZE = re.compile(r"Image size \((\d+) pixels\)")
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
                  PILImage.DecompressionBombError, struct.error)


@dataclass(frozen=True)
class Image:
    """Decoded pixels in 0..1 plus what is needed to write them back faithfully."""

    pixels: np.ndarray  # float32, H x W x C, C in (1, 3)
    alpha: np.ndarray | None = None  # float32, H x W
    bit_depth: int = 8
    source_format: str | None = None
    source_mode: str = "RGB"
    icc_profile: bytes | None = None
    exif: bytes | None = None  # orientation already applied to the pixels and reset to 1
    jpeg: JpegInfo | None = None  # a JPEG's quality and chroma subsampling (these pixels decoded)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def mode(self) -> str:
        base = "L" if self.channels == 1 else "RGB"
        return base + ("A" if self.alpha is not None else "")

    def with_pixels(self, pixels: np.ndarray, alpha: np.ndarray | None) -> Image:
        """New pixels with this image's metadata; no longer the JPEG's decoded pixels."""
        return replace(self, pixels=pixels, alpha=alpha, jpeg=None)


@functools.cache
def _register_plugins() -> None:
    """Let Pillow open HEIC/HEIF (the iPhone's default) through pillow-heif; done once, on first use."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


def _bomb_pixels(error: Exception) -> int | None:
    """The pixel count in Pillow's decompression-bomb message ("Image size (N pixels) exceeds ...")."""
    found = _BOMB_SIZE.search(str(error))
    return int(found.group(1)) if found else None


def _open(data: bytes, max_pixels: int) -> PILImage.Image:
    if not data:
        raise ImageDecodeError("empty upload: no image data")
    _register_plugins()
    try:
        with warnings.catch_warnings():
            # past Pillow's warning threshold the service's own limit below decides
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            im = PILImage.open(io.BytesIO(data), formats=input_formats.pillow_formats())
    except PILImage.DecompressionBombError as e:
        # far past any limit of ours: Pillow refuses before a size is known to us; say ours
        pixels = _bomb_pixels(e)
        size = f"{pixels} pixels" if pixels else "too many pixels"
        raise ImageTooLargeError(f"image is {size}, over the limit of {max_pixels} pixels",
                                 pixels=pixels, max_pixels=max_pixels) from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not a readable image: the data is in none of the accepted formats "
                               f"({input_formats.described()})") from e
    except _DECODE_ERRORS as e:
        raise ImageDecodeError(f"not a readable image ({type(e).__name__}: {e})") from e
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageDecodeError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} pixels",
            pixels=w * h, max_pixels=max_pixels)
    return im


def open_image(data: bytes, *, max_pixels: int) -> PILImage.Image:
    """The upload opened by Pillow (header read, no pixels decoded) within the pixel limit."""
    return _open(data, max_pixels)


def probe(data: bytes, *, max_pixels: int) -> tuple[int, int, str]:
    """Width, height and format from the header alone (cheap); raises the same errors as decode."""
    im = _open(data, max_pixels)
    return im.size[0], im.size[1], str(im.format or "unknown")


def _to_float(im: PILImage.Image) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Pixels (H x W x C float32), alpha or None, bit depth, for any Pillow mode."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        return (np.clip(a, 0, 65535) / 65535.0).astype(np.float32)[..., None], None, 16
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        return np.clip(a / 255.0, 0, 1)[..., None], None, 16
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in ("RGBa",):
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX: Pillow's conversion to RGB
    a = np.array(im, dtype=np.float32)
    a /= np.float32(255.0)  # in place: a 12 MP photo's float copy is 144 MB
    if a.ndim == 2:
        return a[..., None], None, 8
    if im.mode == "LA":
        return a[..., :1].copy(), a[..., 1].copy(), 8
    if im.mode == "RGBA":
        return a[..., :3].copy(), a[..., 3].copy(), 8
    return a, None, 8


def _deep_to_float(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Pixels, alpha and bit depth (16) of H x W x C uint16 samples with C 2, 3 or 4."""
    a = samples.astype(np.float32)
    a /= np.float32(65535.0)
    if a.shape[2] in (2, 4):
        return a[..., :-1].copy(), a[..., -1].copy(), 16
    return a, None, 16


def decode(data: bytes, *, max_pixels: int) -> Image:
    """Decode an upload: EXIF orientation applied, first frame of animations, alpha kept."""
    im = _open(data, max_pixels)
    try:
        im.load()
        src_format, src_mode = im.format, im.mode
        icc = im.info.get("icc_profile")
        orientation = im.getexif().get(_ORIENTATION, 1)
        jpeg = jpeg_info.read(im, transposed=orientation in (5, 6, 7, 8))
        im = ImageOps.exif_transpose(im) or im
        exif = _normalised_exif(im)
        deep = depth16.deep_png_header(data) if src_format == "PNG" else None
        if deep is None:
            pixels, alpha, depth = _to_float(im)
        else:
            pixels, alpha, depth = _deep_to_float(depth16.read_png(data, deep, orientation))
    except _DECODE_ERRORS as e:
        raise ImageDecodeError(f"corrupt or truncated image ({type(e).__name__}: {e})") from e
    return Image(pixels=pixels, alpha=alpha, bit_depth=depth, source_format=src_format,
                 source_mode=src_mode, icc_profile=icc if isinstance(icc, bytes) else None, exif=exif,
                 jpeg=jpeg)


def _normalised_exif(upright: PILImage.Image) -> bytes | None:
    """The EXIF block of an image already turned upright, saying so (Orientation 1)."""
    exif = upright.getexif()
    if not exif:
        return None
    exif[_ORIENTATION] = 1
    return exif.tobytes()


def read(path: str) -> Image:
    with open(path, "rb") as f:
        return decode(f.read(), max_pixels=1 << 40)


def _quantize(a: np.ndarray, depth: int) -> np.ndarray:
    top = 65535 if depth == 16 else 255
    q = np.clip(a, 0.0, 1.0)
    q *= top  # in place, one float copy instead of three (144 MB each for a 12 MP photo)
    return np.rint(q, out=q).astype(np.uint16 if depth == 16 else np.uint8)


def _is_deep_color(img: Image, fmt: str) -> bool:
    """Whether ``img`` is written with 16-bit color or alpha, which Pillow cannot write."""
    return img.bit_depth == 16 and fmt in _DEEP_FORMATS and (img.channels == 3 or img.alpha is not None)


def _encode_deep(img: Image, fmt: str) -> bytes:
    planes = [img.pixels] if img.alpha is None else [img.pixels, img.alpha[..., None]]
    samples = _quantize(np.concatenate(planes, axis=2), 16)
    if fmt == "TIFF":
        return depth16.write_tiff(samples, icc_profile=img.icc_profile)
    return depth16.write_png(samples, icc_profile=img.icc_profile, exif=img.exif, level=PNG_COMPRESS_LEVEL)


def to_pil(img: Image, fmt: str) -> PILImage.Image:
    if img.channels == 1 and img.bit_depth == 16 and img.alpha is None and fmt in _DEEP_FORMATS:
        return PILImage.fromarray(_quantize(img.pixels[..., 0], 16))
    rgb = _quantize(img.pixels, 8)
    if img.alpha is None:
        return PILImage.fromarray(rgb[..., 0] if img.channels == 1 else rgb)
    alpha = _quantize(img.alpha, 8)[..., None]
    if fmt == "JPEG":  # no alpha in JPEG: composite over white
        a = img.alpha[..., None]
        flat = _quantize(img.pixels * a + (1.0 - a), 8)
        return PILImage.fromarray(flat[..., 0] if img.channels == 1 else flat)
    both = np.concatenate([rgb, alpha], axis=2)
    if img.channels == 1:  # Pillow infers no LA mode from a 2-plane array
        return PILImage.merge("LA", [PILImage.fromarray(both[..., 0]), PILImage.fromarray(both[..., 1])])
    return PILImage.fromarray(both)


def encode(img: Image, fmt: str = "png", *, quality: int | None = None) -> bytes:
    """PNG or TIFF (16 bits kept), WebP, JPEG (alpha composited over white) or GIF (256 colors), with
    the source's ICC profile and EXIF; ``quality`` (1..100, default 95) for JPEG and WebP."""
    key = format_of(fmt)
    if key is None or key not in _PIL_FORMATS:
        raise ValueError(f"unsupported output format {fmt!r} for an image; "
                         f"choose from {', '.join(STILL_FORMATS)}")
    pil_fmt = _PIL_FORMATS[key]
    if _is_deep_color(img, pil_fmt):
        return _encode_deep(img, pil_fmt)
    im = to_pil(img, pil_fmt)
    buf = io.BytesIO()
    opts: dict[str, object] = {}
    if img.icc_profile:
        opts["icc_profile"] = img.icc_profile
    if img.exif:
        opts["exif"] = img.exif
    if pil_fmt == "JPEG":
        opts["quality"] = quality or DEFAULT_QUALITY
    elif pil_fmt == "WEBP":
        opts.update(quality=quality or DEFAULT_QUALITY, method=4)
    elif pil_fmt == "PNG":
        opts["compress_level"] = PNG_COMPRESS_LEVEL
    elif pil_fmt == "TIFF":
        opts["compression"] = "tiff_adobe_deflate"
    im.save(buf, format=pil_fmt, **opts)
    return buf.getvalue()


def write(img: Image, path: str, fmt: str | None = None, *, quality: int | None = None) -> None:
    ext = fmt or path.rsplit(".", 1)[-1]
    data = encode(img, ext, quality=quality)
    with open(path, "wb") as f:
        f.write(data)


def luma(rgb: np.ndarray) -> np.ndarray:
    """The Y plane (H x W x 1) of rgb_to_ycbcr alone, bit for bit (the same operations in order)."""
    r, g, b = (np.asarray(rgb[..., i], dtype=np.float32) for i in range(3))
    y = np.multiply(r, np.float32(0.299))
    t = np.multiply(g, np.float32(0.587))
    y += t
    np.multiply(b, np.float32(0.114), out=t)
    y += t
    return y[..., None]


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 YCbCr (as JPEG stores it), all planes in 0..1."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1).astype(np.float32)


def ycbcr_to_rgb(ycc: np.ndarray, cbcr: np.ndarray | None = None) -> np.ndarray:
    """RGB (float32, clipped to 0..1) of full-range YCbCr: one H x W x 3 array, or the Y plane
    (H x W x 1) and ``cbcr`` (H x W x 2) apart (no copy joining them: a 1080p photo's is 25 MB)."""
    y = ycc[..., 0]
    if cbcr is None:
        cbcr = ycc[..., 1:]
    cb, cr = cbcr[..., 0] - np.float32(0.5), cbcr[..., 1] - np.float32(0.5)
    out = np.empty(y.shape + (3,), dtype=np.float32)
    t = np.multiply(cr, np.float32(1.402))
    np.add(y, t, out=out[..., 0])
    np.multiply(cb, np.float32(0.344136), out=t)
    np.subtract(y, t, out=out[..., 1])
    np.multiply(cr, np.float32(0.714136), out=t)
    out[..., 1] -= t
    np.multiply(cb, np.float32(1.772), out=t)
    np.add(y, t, out=out[..., 2])
    return np.clip(out, 0.0, 1.0, out=out)
