"""Inputs of many frames: animated GIF, APNG and WebP (Pillow) and MP4, MOV and WebM videos (PyAV).

``probe`` tells a still from an animation from a video by the file's header and counts the frames
without decoding them, so the API can bound a job before anything is decoded in full;
``output_format`` picks (and checks) what a job writes. Torch-free: the API process imports it;
the frame-by-frame restoration is ``models.media.restore``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models import imageio
from models.errors import OptionError, TooManyFramesError
from models.media import animation, video
from models.vocab import ANIMATED_FORMATS, STILL_FORMATS, VIDEO_FORMATS, Format

Kind = Literal["still", "animation", "video"]
# what each kind may be written as, and the words a refusal uses for it
_WRITABLE: dict[str, tuple[tuple[Format, ...], str]] = {
    "still": (STILL_FORMATS, "a still image"), "animation": (ANIMATED_FORMATS, "an animation"),
    "video": (VIDEO_FORMATS, "a video")}


@dataclass(frozen=True)
class MediaFacts:
    """An upload's kind, container, frame size and frame count (and a video's frame rate)."""

    kind: Kind
    format: str  # ours (png, gif, webp, mp4, ...) for animations and videos; Pillow's name for stills
    width: int
    height: int
    frames: int = 1
    fps: float | None = None


def probe(data: bytes, *, max_pixels: int, max_frames: int) -> MediaFacts:
    """Kind, size and frames from the headers; ImageDecodeError, ImageTooLargeError or
    TooManyFramesError as soon as the headers show it."""
    container = video.sniff(data)
    if container is not None:
        v = video.probe(data, container, max_pixels=max_pixels, max_frames=max_frames)
        return MediaFacts("video", container, v.width, v.height, v.frames, v.fps)
    im = imageio.open_image(data, max_pixels=max_pixels)
    w, h = im.size
    if animation.is_animated(im):
        n = animation.frame_count(im)
        TooManyFramesError.check("animation", n, max_frames)
        return MediaFacts("animation", animation.PIL_ANIMATED[str(im.format)], w, h, n)
    return MediaFacts("still", str(im.format or "unknown"), w, h)


def output_format(facts: MediaFacts, asked: Format | None, still_default: Format = "png") -> Format:
    """What the job writes: the format asked for, else the source's container (a still: png, or what
    the client's Accept header preferred); OptionError if the kind cannot be written so."""
    allowed, what = _WRITABLE[facts.kind]
    if asked is None:
        if facts.kind == "still":  # the Accept header's choice, where a still can be written so
            return still_default if still_default in allowed else "png"
        return next(f for f in allowed if f == facts.format)
    if asked not in allowed:
        raise OptionError(f"format={asked} cannot hold {what}; choose from {', '.join(allowed)}")
    return asked
