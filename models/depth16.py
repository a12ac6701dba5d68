"""16-bit color, which Pillow reads as 8 bits and cannot write: PNG in, PNG and TIFF out.

Pillow has no 48- or 64-bit mode: it decodes a 16-bit RGB(A) or gray+alpha PNG to the high byte of
each sample. ``read_png`` gets the low bytes from a second Pillow decode of the same file with the
two bytes of every sample swapped; PNG's filters work byte by byte between bytes at the same place
in neighbouring pixels, so swapping bytes inside each pixel commutes with them and Pillow's (fast, C)
unfiltering does all the work. Writing uses tifffile for TIFF and a few chunks by hand for PNG.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image as PILImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG color type -> samples per pixel: gray+alpha, RGB, RGBA (16-bit gray is Pillow's own I;16)
_CHANNELS = {4: 2, 2: 3, 6: 4}
_COLOR_TYPE = {channels: ctype for ctype, channels in _CHANNELS.items()}
_EXIF_HEADER = b"Exif\x00\x00"
# EXIF orientation -> the numpy steps that turn the picture upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def deep_png_header(data: bytes) -> bytes | None:
    """The IHDR of a 16-bit, non-interlaced PNG with color or alpha; None for anything else."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    ihdr = data[16:29]
    if len(ihdr) != 13:
        return None
    _, _, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    # an interlaced file is rare; it keeps Pillow's 8 bits (docs/service.md says so)
    return ihdr if depth == 16 and ctype in _CHANNELS and interlace == 0 else None


def read_png(data: bytes, ihdr: bytes, orientation: int = 1) -> np.ndarray:
    """H x W x C uint16 samples of a PNG that ``deep_png_header`` accepted, turned upright."""
    width, height, _, ctype, _, _, _ = struct.unpack(">IIBBBBB", ihdr)
    channels = _CHANNELS[ctype]
    stride = 1 + width * channels * 2  # each row: its filter type, then big-endian samples
    raw = zlib.decompress(b"".join(body for kind, body in _chunks(data) if kind == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8, count=stride * height).reshape(height, stride).copy()
    pairs = rows[:, 1:].reshape(height, width * channels, 2)
    pairs[:] = pairs[..., ::-1].copy()
    swapped = PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
    high = _pillow_samples(data, channels)
    low = _pillow_samples(swapped, channels)
    samples = (high << 8) | low
    return np.ascontiguousarray(_UPRIGHT.get(orientation, lambda a: a)(samples))


def _pillow_samples(png: bytes, channels: int) -> np.ndarray:
    """Pillow's 8-bit decode as H x W x ``channels`` uint16 (it reads gray+alpha as RGBA)."""
    planes = np.asarray(PILImage.open(io.BytesIO(png)), np.uint16)
    return planes[..., [0, 3]] if channels == 2 else planes


def write_png(samples: np.ndarray, *, icc_profile: bytes | None, exif: bytes | None, level: int) -> bytes:
    """A 16-bit PNG of H x W x C uint16 samples (C 2, 3 or 4), every row unfiltered."""
    height, width, channels = samples.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 16, _COLOR_TYPE[channels], 0, 0, 0)
    rows = np.zeros((height, 1 + width * channels * 2), np.uint8)
    rows[:, 1:] = samples.astype(">u2").view(np.uint8).reshape(height, -1)
    out = [PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
    if icc_profile:
        out.append(_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        out.append(_chunk(b"eXIf", exif.removeprefix(_EXIF_HEADER)))
    out += [_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)), _chunk(b"IEND", b"")]
    return b"".join(out)


def write_tiff(samples: np.ndarray, *, icc_profile: bytes | None) -> bytes:
    """A deflate-compressed 16-bit TIFF of H x W x C uint16 samples (gray, gray+alpha, RGB, RGBA)."""
    import tifffile

    channels = samples.shape[2]
    buf = io.BytesIO()
    tifffile.imwrite(buf, samples if channels > 1 else samples[..., 0],
                     photometric="rgb" if channels >= 3 else "minisblack",
                     extrasamples=["unassalpha"] if channels in (2, 4) else None,
                     compression="zlib", iccprofile=icc_profile)
    return buf.getvalue()
