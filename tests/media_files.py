"""Animations and videos made in the tests: APNG, GIF and WebP by Pillow, MP4 with AAC by PyAV."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
from PIL import Image


def frames(n: int, w: int, h: int, seed: int = 0, alpha: bool = False) -> list[np.ndarray]:
    """``n`` different smooth-plus-noise frames (a moving gradient), uint8 RGB or RGBA."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        base = np.stack([(x + 7 * i) / w, (y + 3 * i) / h, 0.5 + 0.4 * np.sin((x + y + 5 * i) / 9)], axis=2)
        noisy = np.clip(base * 200 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        if alpha:
            a = np.full((h, w, 1), 255, np.uint8)
            a[: h // 3, : w // 3] = 0  # a transparent corner
            noisy = np.concatenate([noisy, a], axis=2)
        out.append(noisy)
    return out


def animation(fmt: str, n: int = 8, w: int = 48, h: int = 40, durations: list[int] | None = None,
              loop: int | None = 0, alpha: bool = False, seed: int = 0) -> bytes:
    """An animated ``fmt`` (PNG = APNG, GIF, WEBP) of ``n`` frames with the given durations (ms)."""
    ims = [Image.fromarray(f) for f in frames(n, w, h, seed, alpha)]
    durations = durations or [40 + 20 * (i % 3) for i in range(n)]
    opts: dict[str, object] = {"save_all": True, "append_images": ims[1:], "duration": durations}
    if loop is not None:
        opts["loop"] = loop
    if fmt == "WEBP":
        opts["lossless"] = True
    buf = io.BytesIO()
    ims[0].save(buf, format=fmt, **opts)
    return buf.getvalue()


def video(n: int = 24, w: int = 160, h: int = 120, fps: int = 12, audio: bool = True, container: str = "mp4",
          seed: int = 0, solid: bool = False) -> bytes:
    """An H.264 (MP4/MOV) or VP9 (WebM) clip of ``n`` frames at ``fps``, with a sine tone as AAC or Opus."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        v = out.add_stream("libvpx-vp9" if container == "webm" else "libx264", rate=fps,
                           options={"preset": "ultrafast"} if container != "webm" else {"cpu-used": "8"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = None
        if audio:
            a = out.add_stream("libopus" if container == "webm" else "aac", rate=48000)
        pics = [np.full((h, w, 3), 128, np.uint8)] * n if solid else frames(n, w, h, seed)
        for i, rgb in enumerate(pics):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        if a is not None:
            samples = int(48000 * n / fps)
            t = np.arange(samples) / 48000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            step = 960 if container == "webm" else 1024
            for start in range(0, samples, step):
                chunk = np.ascontiguousarray(tone[:, start:start + step])
                af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                af.sample_rate = 48000
                af.pts = start
                out.mux(a.encode(af))
            out.mux(a.encode(None))
    return buf.getvalue()
