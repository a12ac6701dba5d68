"""MP4, MOV and WebM through PyAV (FFmpeg's libraries in a wheel): probe, frames out, frames back in.

Only these containers are opened, each with its own demuxer named explicitly (never FFmpeg's guess:
it would also open playlists that point at other files). The first video stream is decoded to RGB;
the written video keeps every frame's presentation time (so the frame rate and the duration are the
source's) and the first audio stream is copied packet for packet where the container takes its
codec, else re-encoded (AAC for MP4/MOV, Opus for WebM).

Encoder defaults: H.264 (libx264, preset ``fast``, CRF 20) in MP4 and MOV, VP9 (libvpx-vp9, CRF 32,
constant quality) in WebM, 4:2:0. ``quality`` 1..100 maps linearly onto the codec's CRF scale
(100: CRF 0, the best; 1: the worst), so a higher number is a better picture, as for JPEG.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType

import av
import numpy as np

from models.errors import ImageDecodeError, ImageTooLargeError, TooManyFramesError

# FFmpeg's demuxer of each container models.input_formats accepts (the ISO one reads MP4 and QuickTime)
_DEMUXER = {"mp4": "mov", "mov": "mov", "webm": "matroska"}
_VIDEO_CODEC = {"mp4": "libx264", "mov": "libx264", "webm": "libvpx-vp9"}
_AUDIO_CODEC = {"mp4": "aac", "mov": "aac", "webm": "libopus"}
# audio codecs each container takes as they are (copied, never re-encoded)
_COPYABLE = {"mp4": {"aac", "mp3", "alac", "opus", "ac3"}, "mov": {"aac", "mp3", "alac", "ac3", "pcm_s16le"},
             "webm": {"opus", "vorbis"}}
# (CRF when no quality is asked for, the codec's worst CRF)
_CRF = {"libx264": (20, 51), "libvpx-vp9": (32, 63)}
_AV_ERRORS = (av.error.FFmpegError, ValueError, IndexError)


# major brands of ISO files that hold still images (HEIF/HEIC, AVIF), not video
_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1",
                 b"avif", b"avis", b"avio", b"crx "}


def sniff(data: bytes) -> str | None:
    """The container a file's first bytes name: mp4, mov (QuickTime brand) or webm (Matroska); None for
    anything else, an ISO file of still images (HEIC, AVIF) too."""
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] not in _IMAGE_BRANDS:
        return "mov" if data[8:12] == b"qt  " else "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


@dataclass(frozen=True)
class VideoFacts:
    """What the container's headers say, read without decoding a frame."""

    format: str
    width: int
    height: int
    frames: int
    fps: float
    has_audio: bool


def _open(data: bytes, fmt: str) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(data), mode="r", format=_DEMUXER[fmt])
    except _AV_ERRORS as e:
        raise ImageDecodeError(f"not a readable {fmt} video ({type(e).__name__}: {e})") from e


def probe(data: bytes, fmt: str, *, max_pixels: int, max_frames: int) -> VideoFacts:
    """Size, frame count and rate from the headers (packets are counted where the header has no
    count); ImageTooLargeError / TooManyFramesError past the limits, before any frame is decoded."""
    with _open(data, fmt) as c:
        if not c.streams.video:
            raise ImageDecodeError(f"the {fmt} file has no video stream")
        v = c.streams.video[0]
        w, h = int(v.codec_context.width), int(v.codec_context.height)
        if w < 1 or h < 1:
            raise ImageDecodeError(f"the video stream has no picture size ({w}x{h})")
        if w * h > max_pixels:
            raise ImageTooLargeError(f"video frames are {w}x{h} = {w * h} pixels, over the limit of "
                                     f"{max_pixels} pixels", pixels=w * h, max_pixels=max_pixels)
        frames = int(v.frames or 0)
        if frames <= 0:
            try:
                frames = sum(1 for p in c.demux(v) if p.size)
            except _AV_ERRORS as e:
                raise ImageDecodeError(f"corrupt {fmt} video ({type(e).__name__}: {e})") from e
        if frames < 1:
            raise ImageDecodeError("the video stream has no frames")
        TooManyFramesError.check("video", frames, max_frames)
        rate = v.average_rate or v.guessed_rate or 0
        return VideoFacts(fmt, w, h, frames, float(rate), bool(c.streams.audio))


def frames(data: bytes, fmt: str, *, max_frames: int) -> Iterator[tuple[np.ndarray, int | None]]:
    """Each frame of the first video stream as uint8 RGB (H x W x 3) with its presentation time."""
    with _open(data, fmt) as c:
        v = c.streams.video[0]
        v.thread_type = "AUTO"
        n = 0
        try:
            for frame in c.decode(v):
                n += 1
                TooManyFramesError.check("video", n, max_frames)  # a header that undercounted
                yield frame.to_ndarray(format="rgb24"), frame.pts
        except _AV_ERRORS as e:
            raise ImageDecodeError(f"corrupt {fmt} video at frame {n} ({type(e).__name__}: {e})") from e


def _even(rgb: np.ndarray) -> np.ndarray:
    """4:2:0 needs even sides: an odd one gets its last row or column repeated."""
    h, w = rgb.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return rgb
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class Writer:
    """Writes restored frames as ``fmt`` with the source's timing, then copies the source's audio."""

    def __init__(self, source: bytes, source_fmt: str, fmt: str, *, quality: int | None = None) -> None:
        self._source, self._source_fmt, self._fmt, self._quality = source, source_fmt, fmt, quality
        self._buf = io.BytesIO()
        self._out = av.open(self._buf, mode="w", format=fmt)
        with _open(source, source_fmt) as c:
            v = c.streams.video[0]
            self._time_base: Fraction = v.time_base or Fraction(1, 1000)
            self._rate = v.average_rate or v.guessed_rate or Fraction(25, 1)
        self._stream: av.video.stream.VideoStream | None = None
        self._audio_out: av.stream.Stream | None = None
        self._copy = False  # the audio goes in packet for packet (else it is re-encoded)
        self._count = 0

    def _open_streams(self, width: int, height: int) -> av.video.stream.VideoStream:
        """The video stream, and the audio one (the container takes no stream once it has data)."""
        codec = _VIDEO_CODEC[self._fmt]
        default_crf, worst = _CRF[codec]
        crf = default_crf if self._quality is None else round(worst * (100 - self._quality) / 100)
        options = {"crf": str(crf)}
        if codec == "libx264":
            options["preset"] = "fast"
        else:
            options.update({"b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"})
        stream: av.video.stream.VideoStream = self._out.add_stream(  # type: ignore[assignment]
            codec, rate=self._rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = self._time_base
        with _open(self._source, self._source_fmt) as c:
            if c.streams.audio:
                a = c.streams.audio[0]
                if a.codec_context.name in _COPYABLE[self._fmt]:
                    self._audio_out = self._out.add_stream_from_template(a)
                    self._copy = True
                else:
                    name = _AUDIO_CODEC[self._fmt]
                    self._audio_out = self._out.add_stream(name, rate=48000 if name == "libopus" else a.rate)
        return stream

    def write(self, rgb: np.ndarray, pts: int | None) -> None:
        """One frame (uint8 RGB) shown at ``pts`` in the source's time base (None: after the last)."""
        rgb = _even(rgb)
        if self._stream is None:
            self._stream = self._open_streams(rgb.shape[1], rgb.shape[0])
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = pts if pts is not None else round(self._count / (self._rate * self._time_base))
        frame.time_base = self._time_base
        self._count += 1
        self._out.mux(self._stream.encode(frame))

    def finish(self) -> bytes:
        """Flush the encoder, add the source's audio and return the file."""
        if self._stream is None:
            raise ImageDecodeError("the video had no frames to write")
        self._out.mux(self._stream.encode(None))
        if self._audio_out is not None:
            self._audio(self._audio_out)
        self._out.close()
        return self._buf.getvalue()

    def _audio(self, out: av.stream.Stream) -> None:
        with _open(self._source, self._source_fmt) as c:
            a = c.streams.audio[0]
            if self._copy:
                for packet in c.demux(a):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    packet.stream = out
                    self._out.mux(packet)
                return
            for frame in c.decode(a):
                frame.pts = None
                self._out.mux(out.encode(frame))  # type: ignore[attr-defined]
            self._out.mux(out.encode(None))  # type: ignore[attr-defined]

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:  # finish() closed it otherwise; the error that got here is the one to see
            with suppress(*_AV_ERRORS):
                self._out.close()
