"""Restoring every frame of an animation or a video, each exactly as the same picture as a still.

Frames travel as uint8 arrays (H x W x 3, or x 4 with alpha): what the decoders give and the
encoders take, and what a chunk of frames is stored as between workers. The denoise strength is
settled once, on the first frame, so that ``auto`` cannot flicker from frame to frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from models import imageio, media
from models.engine import DEFAULT_TILE_BYTES, RestorationModel
from models.imageio import Image
from models.media import animation, video
from models.pipeline import StageReport, resolve_strength, run_stages
from models.stages import AUTO, STRENGTH_TASK, Strength

# (frames done, frames in all); called within a frame too, with fractions of it in thousandths
FrameProgress = Callable[[float, int], None]


def to_image(frame: np.ndarray) -> Image:
    """A uint8 frame as the pipeline's float image (alpha apart)."""
    px = frame[..., :3].astype(np.float32) / np.float32(255.0)
    alpha = frame[..., 3].astype(np.float32) / np.float32(255.0) if frame.shape[2] == 4 else None
    return Image(pixels=px, alpha=alpha)


def to_frame(img: Image) -> np.ndarray:
    """The pipeline's image as a uint8 frame, rounded as a still's PNG would be."""
    return np.asarray(imageio.to_pil(img, "PNG"), dtype=np.uint8)


def merge_reports(a: list[StageReport], b: list[StageReport]) -> list[StageReport]:
    """One report per stage for many frames: the times and tiles add up."""
    if not a:
        return list(b)
    return [replace(x, inference_ms=x.inference_ms + y.inference_ms, tiles=x.tiles + y.tiles)
            for x, y in zip(a, b, strict=True)]


class FrameRestorer:
    """Runs the stages on one frame after another with the same options; keeps the stage reports."""

    def __init__(self, models: Sequence[RestorationModel], *, tile: int | None = None,
                 strength: Strength | None = None, memory_bytes: int = DEFAULT_TILE_BYTES,
                 chroma: RestorationModel | None = None) -> None:
        self.models = list(models)
        self.tile, self.memory_bytes, self.chroma = tile, memory_bytes, chroma
        self.strength = strength
        self.sigma: float | None = None
        self.reports: list[StageReport] = []
        self.frames = 0

    def settle_strength(self, first: np.ndarray) -> None:
        """Fix ``auto`` to a number from the first frame (a job spread over workers settles it once
        and hands the number to every chunk)."""
        if not any(m.config.task == STRENGTH_TASK for m in self.models):
            return
        if self.strength is None or self.strength == AUTO:
            self.strength, self.sigma = resolve_strength(AUTO, to_image(first))

    def __call__(self, frame: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        if self.frames == 0:
            self.settle_strength(frame)
        out, reports = run_stages(self.models, to_image(frame), tile=self.tile, strength=self.strength,
                                  memory_bytes=self.memory_bytes, progress=progress, chroma=self.chroma)
        self.reports = merge_reports(self.reports, [
            replace(r, sigma=self.sigma if r.strength is not None else r.sigma) for r in reports])
        self.frames += 1
        return to_frame(out)

    def run(self, frames: Iterable[np.ndarray], total: int, progress: FrameProgress | None = None,
            done: int = 0) -> Iterator[np.ndarray]:
        """Restore ``frames`` lazily; ``progress(done, total)`` in frames, fractions within a frame."""
        for i, frame in enumerate(frames):
            def within(d: int, t: int, i: int = i) -> None:
                if progress is not None:
                    progress(done + i + d / max(t, 1), total)

            yield self(frame, within)


@dataclass(frozen=True)
class Clip:
    """Every frame of an animation or a video, decoded, and what writing them back needs."""

    frames: list[np.ndarray]
    anim: animation.Animation | None = None  # an animation's timing and disposal
    pts: list[int | None] | None = None  # a video's presentation times


def decode_all(data: bytes, facts: media.MediaFacts, *, max_frames: int) -> Clip:
    """All frames at once (a job spread over workers hands them out in chunks)."""
    if facts.kind == "animation":
        anim = animation.decode(imageio.open_image(data, max_pixels=facts.width * facts.height),
                                max_frames=max_frames)
        return Clip(anim.frames, anim=anim)
    pairs = list(video.frames(data, facts.format, max_frames=max_frames))
    return Clip([rgb for rgb, _ in pairs], pts=[t for _, t in pairs])


def encode_all(clip: Clip, restored: Sequence[np.ndarray], data: bytes, facts: media.MediaFacts, fmt: str, *,
               quality: int | None = None) -> bytes:
    """Write the restored frames of ``clip`` as ``fmt`` with the source's timing (and audio)."""
    if clip.anim is not None:
        return animation.encode(replace(clip.anim, frames=list(restored)), fmt, quality=quality)
    with video.Writer(data, facts.format, fmt, quality=quality) as writer:
        for rgb, t in zip(restored, clip.pts or [], strict=True):
            writer.write(rgb, t)
        return writer.finish()


def restore(restorer: FrameRestorer, data: bytes, facts: media.MediaFacts, fmt: str, *,
            quality: int | None = None, max_frames: int, progress: FrameProgress | None = None) -> bytes:
    """Decode an animation or a video, restore every frame, write it as ``fmt`` with its timing (a
    video one frame at a time: only one decoded frame is held)."""
    if facts.kind == "animation":
        clip = decode_all(data, facts, max_frames=max_frames)
        out = list(restorer.run(clip.frames, len(clip.frames), progress))
        return encode_all(clip, out, data, facts, fmt, quality=quality)
    if facts.kind != "video":
        raise ValueError(f"a {facts.kind} has no frames to restore one by one")
    decoded = video.frames(data, facts.format, max_frames=max_frames)
    pts: list[int | None] = []

    def pictures() -> Iterator[np.ndarray]:
        for rgb, t in decoded:
            pts.append(t)
            yield rgb

    with video.Writer(data, facts.format, fmt, quality=quality) as writer:
        for i, rgb in enumerate(restorer.run(pictures(), facts.frames, progress)):
            writer.write(rgb, pts[i])
        return writer.finish()
