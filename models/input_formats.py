"""The image formats an upload (or a CLI input) may be in: every other format is refused unparsed.

Pillow knows some forty formats, and each is a parser that hostile bytes could reach (EPS even runs
Ghostscript where it is installed). ``models.imageio`` asks Pillow to try these and nothing else. To
accept another format, add it here (a plugin that registers with Pillow, such as a HEIF opener, is
imported by the caller first) and to the list in docs/service.md.
"""

from __future__ import annotations

# Pillow's format id -> the media type a client sends it as. JPEG's opener also reads the
# multi-picture JPEGs many phone cameras write (their format then reads MPO).
INPUT_FORMATS: dict[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "AVIF": "image/avif",  # Pillow's own decoder (libavif in its wheels)
    "HEIF": "image/heic",  # HEIC/HEIF, the iPhone's default: pillow-heif's opener (imageio registers it)
}
# video containers (models.media.video: PyAV, told which demuxer, never FFmpeg's guess) -> media type;
# known by their first bytes: an ISO/QuickTime ``ftyp`` box, or Matroska's EBML header
VIDEO_FORMATS: dict[str, str] = {
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
}


def pillow_formats() -> tuple[str, ...]:
    """The format ids to hand ``PIL.Image.open(..., formats=...)``."""
    return tuple(INPUT_FORMATS)


def described() -> str:
    """The accepted formats for an error message, e.g. ``PNG, JPEG, ...; videos MP4, MOV, WEBM``."""
    return ", ".join(INPUT_FORMATS) + "; videos " + ", ".join(f.upper() for f in VIDEO_FORMATS)
