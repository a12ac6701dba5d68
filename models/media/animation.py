"""Animated GIF, APNG and animated WebP: frames out of Pillow and back, with their timing kept.

Pillow hands out every frame already composited onto the canvas, so each frame is a whole picture
that can be restored like a still; the writer then stores the differences again. Durations (ms),
the loop count and each frame's disposal are read and written back; disposal is kept in a
format-neutral spelling so that a GIF written as APNG (or back) means the same.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

from models.errors import ImageDecodeError, TooManyFramesError
from models.imageio import DEFAULT_QUALITY
from models.vocab import ANIMATED_FORMATS

# Pillow's name of each format that can animate, and ours
PIL_ANIMATED = {"GIF": "gif", "PNG": "png", "WEBP": "webp"}
_PIL_OF = {ours: pil for pil, ours in PIL_ANIMATED.items()}
# disposal: what happens to a frame's area before the next one is drawn
DISPOSALS = ("none", "background", "previous")
_GIF_DISPOSAL = {0: "none", 1: "none", 2: "background", 3: "previous"}
_GIF_CODE = {"none": 1, "background": 2, "previous": 3}
_APNG_CODE = {"none": 0, "background": 1, "previous": 2}
_APNG_DISPOSAL = {code: name for name, code in _APNG_CODE.items()}


@dataclass(frozen=True)
class Animation:
    """The frames (uint8 H x W x 3, or x 4 when any frame has transparency) and their timing."""

    frames: list[np.ndarray]
    durations: list[int]  # ms per frame
    loop: int | None  # 0: forever; None: the file said nothing (a GIF without a loop block plays once)
    disposal: list[str]  # one of DISPOSALS per frame
    format: str  # ours: gif, png or webp


def frame_count(im: PILImage.Image) -> int:
    """Frames in an opened image (1 for a still); read from the header where the format has one."""
    return int(getattr(im, "n_frames", 1))


def is_animated(im: PILImage.Image) -> bool:
    return im.format in PIL_ANIMATED and frame_count(im) > 1


def _disposal(im: PILImage.Image) -> str:
    if im.format == "GIF":
        return _GIF_DISPOSAL.get(int(getattr(im, "disposal_method", 0) or 0), "none")
    if im.format == "PNG":
        return _APNG_DISPOSAL.get(int(im.info.get("disposal", 0) or 0), "none")
    return "none"  # WebP frames in Pillow are whole canvases; the encoder chooses its own


def decode(im: PILImage.Image, *, max_frames: int) -> Animation:
    """Every frame of an opened animated image, composited, with its duration and disposal."""
    n = frame_count(im)
    TooManyFramesError.check("animation", n, max_frames)
    fmt = PIL_ANIMATED[str(im.format)]
    frames: list[np.ndarray] = []
    durations: list[int] = []
    disposal: list[str] = []
    loop = im.info.get("loop")
    try:
        for i in range(n):
            im.seek(i)
            rgba = im.convert("RGBA")  # loads the frame: its duration is read after this
            frames.append(np.asarray(rgba, dtype=np.uint8))
            durations.append(int(im.info.get("duration", 0) or 0))
            disposal.append(_disposal(im))
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise ImageDecodeError(f"corrupt or truncated animation at frame {len(frames) + 1} of {n} "
                               f"({type(e).__name__}: {e})") from e
    if all(int(f[..., 3].min()) == 255 for f in frames):  # opaque throughout: plain RGB like a still
        frames = [np.ascontiguousarray(f[..., :3]) for f in frames]
    return Animation(frames, durations, None if loop is None else int(loop), disposal, fmt)


def encode(anim: Animation, fmt: str, *, quality: int | None = None) -> bytes:
    """Write ``anim`` as an animated ``fmt`` (gif, png = APNG, webp) with its timing and disposal."""
    if fmt not in ANIMATED_FORMATS:
        raise ValueError(f"an animation cannot be written as {fmt}; "
                         f"choose from {', '.join(ANIMATED_FORMATS)}")
    images = [PILImage.fromarray(f) for f in anim.frames]
    opts: dict[str, object] = {"save_all": True, "append_images": images[1:],
                               "duration": list(anim.durations)}
    if anim.loop is not None:
        opts["loop"] = anim.loop
    if fmt == "gif":
        opts["disposal"] = [_GIF_CODE[d] for d in anim.disposal]
    elif fmt == "png":
        opts.update(disposal=[_APNG_CODE[d] for d in anim.disposal], blend=0, compress_level=1)
    else:
        opts.update(quality=quality or DEFAULT_QUALITY, method=4, lossless=False)
        if anim.loop is None:
            opts["loop"] = 1  # WebP has no "unsaid": play once, as the source without a loop block did
    buf = io.BytesIO()
    images[0].save(buf, format=_PIL_OF[fmt], **opts)
    return buf.getvalue()
