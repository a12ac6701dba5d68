"""Animations and videos: every frame restored, timing, loop, disposal, alpha and audio kept (issue 22).

The files are made here (tests/media_files.py); the service tests run on the embedded service over
real HTTP, the CLI in a subprocess.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from benchmarks.harness import ROOT
from models import imageio, media, pipeline
from models.errors import OptionError, TooManyFramesError
from models.media import animation
from models.media.restore import FrameRestorer, restore, to_frame, to_image
from tests import media_files
from tests.conftest import Service
from tests.helpers import assert_problem, load_model
from tests.test_web_page import browser, choose, fetched, open_page  # noqa: F401  (browser: the fixture)


def _bbcu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _animation(data: bytes) -> animation.Animation:
    return animation.decode(imageio.open_image(data, max_pixels=1 << 30), max_frames=10_000)


def _video(data: bytes) -> dict:  # type: ignore[type-arg]
    """What a player sees: frames, their rate and size, the duration and the audio codec."""
    with av.open(io.BytesIO(data)) as c:
        v = c.streams.video[0]
        pictures = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
        audio = [a.codec_context.name for a in c.streams.audio]
        audio_packets = sum(1 for p in c.demux(c.streams.audio[0]) if p.size) if audio else 0
    with av.open(io.BytesIO(data)) as c:
        return {"frames": len(pictures), "fps": float(c.streams.video[0].average_rate),
                "size": pictures[0].shape[:2], "duration": c.duration / 1e6, "audio": audio,
                "audio_packets": audio_packets, "pictures": pictures}


def test_apng_sr_x2_every_frame_as_a_still(tiny_weights: Path) -> None:
    """An 8-frame APNG through sr x2: 8 frames, the same durations, loop and disposal; each frame
    within one level of the same frame restored as a still."""
    durations = [40, 60, 80, 100, 40, 60, 80, 120]
    data = media_files.animation("PNG", n=8, w=40, h=32, durations=durations, loop=3)
    facts = media.probe(data, max_pixels=1 << 20, max_frames=100)
    assert (facts.kind, facts.format, facts.frames) == ("animation", "png", 8)
    assert (facts.width, facts.height) == (40, 32)
    model = load_model(tiny_weights, "sr", 2)
    out = restore(FrameRestorer([model]), data, facts, "png", max_frames=100)
    got = _animation(out)
    src = _animation(data)
    assert len(got.frames) == 8 and got.durations == durations and got.loop == 3
    assert got.disposal == src.disposal
    for frame, restored in zip(src.frames, got.frames, strict=True):
        still = to_frame(pipeline.restore_image(model, to_image(frame)))
        assert restored.shape == (64, 80, 3)
        assert np.abs(restored.astype(int) - still.astype(int)).max() <= 1


def test_gif_keeps_frames_durations_and_transparency(tiny_weights: Path) -> None:
    durations = [50, 100, 150, 200, 50, 100]
    data = media_files.animation("GIF", n=6, durations=durations, loop=0, alpha=True)
    facts = media.probe(data, max_pixels=1 << 20, max_frames=100)
    out = restore(FrameRestorer([load_model(tiny_weights, "denoise", None)]), data, facts, "gif",
                  max_frames=100)
    got = _animation(out)
    assert Image.open(io.BytesIO(out)).format == "GIF"
    assert len(got.frames) == 6 and got.durations == durations and got.loop == 0
    assert got.frames[0].shape[2] == 4  # the transparent corner is still transparent
    assert got.frames[0][2, 2, 3] == 0 and got.frames[0][-2, -2, 3] == 255


def test_webp_animation_alpha_resized_for_sr(tiny_weights: Path) -> None:
    data = media_files.animation("WEBP", n=4, w=30, h=24, durations=[70, 80, 90, 100], alpha=True)
    facts = media.probe(data, max_pixels=1 << 20, max_frames=100)
    out = restore(FrameRestorer([load_model(tiny_weights, "sr", 2)]), data, facts, "webp", max_frames=100)
    got = _animation(out)
    assert got.durations == [70, 80, 90, 100] and len(got.frames) == 4
    frame = got.frames[1]
    assert frame.shape == (48, 60, 4) and frame[2, 2, 3] == 0 and frame[-3, -3, 3] == 255


def test_probe_counts_frames_and_refuses_past_the_limit() -> None:
    clip = media_files.video(n=10, w=64, h=48, fps=5, audio=False)
    facts = media.probe(clip, max_pixels=1 << 20, max_frames=100)
    assert (facts.kind, facts.format, facts.frames, facts.fps, facts.width) == ("video", "mp4", 10, 5.0, 64)
    with pytest.raises(TooManyFramesError) as e:
        media.probe(clip, max_pixels=1 << 20, max_frames=9)
    assert (e.value.frames, e.value.max_frames) == (10, 9)
    still = media.probe(media_files.animation("PNG", n=1), max_pixels=1 << 20, max_frames=100)
    assert still.kind == "still" and still.frames == 1


def test_every_accepted_container_has_its_demuxer() -> None:
    from models import input_formats
    from models.media import video

    assert set(video._DEMUXER) == set(input_formats.VIDEO_FORMATS)
    assert video.sniff(media_files.video(n=2, w=16, h=16, audio=False, container="mov")) == "mov"
    assert video.sniff(media_files.video(n=2, w=16, h=16, audio=False, container="webm")) == "webm"
    assert video.sniff(b"GIF89a" + b"\x00" * 16) is None
    assert video.sniff(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 16) is None  # a phone photo


def test_output_format_per_kind() -> None:
    anim = media.MediaFacts("animation", "gif", 8, 8, 3)
    clip = media.MediaFacts("video", "webm", 8, 8, 3, 10.0)
    still = media.MediaFacts("still", "PNG", 8, 8)
    assert media.output_format(anim, None) == "gif" and media.output_format(anim, "webp") == "webp"
    assert media.output_format(clip, None) == "webm" and media.output_format(clip, "mp4") == "mp4"
    assert media.output_format(still, None, "jpeg") == "jpeg"
    assert media.output_format(still, None, "mp4") == "png"  # Accept: video/mp4 cannot apply to a still
    for facts, fmt in ((anim, "jpeg"), (clip, "png"), (still, "mov")):
        with pytest.raises(OptionError, match=f"format={fmt} cannot hold"):
            media.output_format(facts, fmt)


def test_mp4_denoise_over_http_keeps_rate_duration_and_audio(embedded_service: Service) -> None:
    """A 24-frame 160x120 MP4 at 12 fps with AAC through denoise: 24 frames, 12 fps, its audio."""
    clip = media_files.video(n=24, w=160, h=120, fps=12)
    with embedded_service.client(timeout=300) as c:
        r = c.post("/restore", params={"task": "denoise", "strength": "1"},
                   files={"image": ("clip.mp4", clip, "video/mp4")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    assert 'filename="clip-denoise.mp4"' in r.headers["content-disposition"]
    got, src = _video(r.content), _video(clip)
    assert got["frames"] == 24 and got["fps"] == 12.0 and got["size"] == (120, 160)
    assert got["duration"] == pytest.approx(src["duration"], abs=0.05)
    assert got["audio"] == ["aac"] and got["audio_packets"] == src["audio_packets"]
    # denoised, not passed through: the noisy frames got smoother
    assert np.mean([np.abs(np.diff(p.astype(int), axis=1)).mean() for p in got["pictures"]]) < \
        np.mean([np.abs(np.diff(p.astype(int), axis=1)).mean() for p in src["pictures"]])


def test_gif_over_http_keeps_container_and_async_record(embedded_service: Service) -> None:
    data = media_files.animation("GIF", n=5, durations=[30, 40, 50, 60, 70])
    with embedded_service.client(timeout=120) as c:
        r = c.post("/restore", params={"task": "sr", "scale": "2", "async": "true"},
                   files={"image": ("a.gif", data, "image/gif")})
        assert r.status_code == 202, r.text
        from tests.helpers import wait_job

        job = wait_job(c, r.json()["id"], timeout=120)
        assert job["status"] == "succeeded", job
        assert job["input"]["frames"] == 5 and job["output"]["frames"] == 5
        assert (job["output"]["width"], job["output"]["height"], job["output"]["format"]) == (96, 80, "gif")
        assert job["progress"] == 1.0
        res = c.get(f"/jobs/{job['id']}/result")
    assert res.headers["content-type"] == "image/gif"
    got = _animation(res.content)
    assert len(got.frames) == 5 and got.durations == [30, 40, 50, 60, 70]


def test_limits_over_http(embedded_service: Service) -> None:
    many = media_files.animation("GIF", n=1001, w=4, h=4)  # the default frame limit is 1000
    with embedded_service.client() as c:
        r = c.post("/restore", params={"task": "denoise"}, files={"image": ("a.gif", many, "image/gif")})
        body = assert_problem(r, 413)
        assert body["frames"] == 1001 and body["max_frames"] == 1000 and "1000 frames" in body["detail"]
        clip = media_files.video(n=4, w=32, h=32, audio=False)
        r = c.post("/restore", params={"task": "denoise", "format": "png"},
                   files={"image": ("c.mp4", clip, "video/mp4")})
        assert "format=png cannot hold a video" in assert_problem(r, 422)["detail"]
        raw = {"content-type": "video/mp4"}
        r = c.post("/restore", params={"task": "denoise"}, content=clip, headers=raw)
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
        broken = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64
        r = c.post("/restore", params={"task": "denoise"}, content=broken, headers=raw)
        assert "not a readable mp4 video" in assert_problem(r, 415)["detail"]


def test_cost_bound_counts_frames(tmp_path: Path) -> None:
    """1200 frames of 640x480 at x4 (the shipped network) are over the default work budget."""
    from app.submission import check_cost, check_models
    from models.catalog import WEIGHTS_DIR
    from models.errors import JobTooCostlyError
    from workers.contract import ImageFacts
    from workers.settings import Settings

    settings = Settings(max_frames=5000)
    ops = check_models(WEIGHTS_DIR, ("sr",), 4, None).ops_per_pixel
    one = ImageFacts(width=640, height=480, bytes=1, format="mp4", frames=1)
    check_cost(one, ops, settings)  # a single frame fits
    with pytest.raises(JobTooCostlyError, match="1200 frames of 640x480") as e:
        check_cost(one.model_copy(update={"frames": 1200}), ops, settings)
    assert e.value.max_gops == settings.max_job_gops and e.value.gops > settings.max_job_gops


@pytest.mark.service  # runs `bbcu` in its own process
def test_cli_restores_mp4_sr_x2(tmp_path: Path, tiny_weights: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(media_files.video(n=24, w=160, h=120, fps=12))
    out = tmp_path / "out.mp4"
    weights = str(tiny_weights / "tiny_sr_x2_l.safetensors")
    r = _bbcu("restore", str(clip), "-o", str(out), "--task", "sr", "--scale", "2", "--weights", weights,
              "--quiet")
    assert r.returncode == 0, r.stderr
    got = _video(out.read_bytes())
    assert got["frames"] == 24 and got["fps"] == 12.0 and got["size"] == (240, 320)
    assert got["audio"] == ["aac"]
    r = _bbcu("restore", str(clip), "-o", str(tmp_path / "x.png"), "--task", "sr", "--scale", "2",
              "--weights", weights)
    assert r.returncode == 1 and "format=png cannot hold a video" in r.stderr


def test_the_page_plays_a_video_result(browser, embedded_service: Service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The page takes a WebM, follows the job and plays the restored clip (Debian's headless Chromium)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = browser
    clip = tmp_path / "clip.webm"
    clip.write_bytes(media_files.video(n=8, w=64, h=48, fps=8, container="webm"))
    wait = open_page(driver, embedded_service)
    choose(driver, "task", "denoise")
    driver.find_element(By.ID, "files").send_keys(str(clip))
    driver.find_element(By.ID, "start").click()
    link = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".job .download")))
    assert link.get_attribute("download") == "clip-denoise.webm"
    video = driver.find_element(By.CSS_SELECTOR, ".job video.clip")
    assert video.is_displayed()
    assert not driver.find_element(By.CSS_SELECTOR, ".job img.after").is_displayed()
    # it plays: the page's Content-Security-Policy lets a video load from the blob: URL of the result
    wait.until(lambda d: d.execute_script("return arguments[0].readyState", video) >= 1)
    size = driver.execute_script("return [arguments[0].videoWidth, arguments[0].videoHeight]", video)
    assert size == [64, 48]
    assert "8 frames at 8 fps" in driver.find_element(By.CSS_SELECTOR, ".job .note").text
    got = _video(fetched(driver, link.get_attribute("href")))
    assert got["frames"] == 8 and got["fps"] == 8.0 and got["audio"] == ["opus"]


@pytest.mark.parametrize("source,fmt,audio", [("mov", "mov", "aac"), ("webm", "webm", "opus"),
                                              ("mp4", "webm", "opus"), ("webm", "mp4", "opus")])
def test_containers_and_audio(tiny_weights: Path, source: str, fmt: str, audio: str) -> None:
    """MOV and WebM in and out; audio copied where the container takes its codec (Opus in MP4 too), else
    re-encoded (AAC into WebM becomes Opus)."""
    clip = media_files.video(n=6, w=48, h=32, fps=6, container=source)
    facts = media.probe(clip, max_pixels=1 << 20, max_frames=100)
    assert facts.format == source and facts.frames == 6
    restorer = FrameRestorer([load_model(tiny_weights, "denoise", None)])
    out = restore(restorer, clip, facts, fmt, max_frames=100, quality=80)
    got, src = _video(out), _video(clip)
    assert media.probe(out, max_pixels=1 << 20, max_frames=100).format == fmt
    assert got["frames"] == 6 and got["size"] == (32, 48) and got["audio"] == [audio]
    # WebM keeps times in milliseconds: 1/6 s is 167 ms, so an MP4 written from it runs at 6.002 fps
    assert got["fps"] == pytest.approx(6.0, abs=0.01)
    assert got["duration"] == pytest.approx(src["duration"], abs=0.1)


def test_cli_url_restores_an_animation_on_the_service(embedded_service: Service, tmp_path: Path) -> None:
    src = tmp_path / "a.gif"
    src.write_bytes(media_files.animation("GIF", n=4, durations=[30, 60, 90, 120]))
    r = _bbcu("restore", str(src), "-o", str(tmp_path / "out.gif"), "--task", "denoise", "--url",
              embedded_service.url, "--quiet")
    assert r.returncode == 0, r.stderr
    got = _animation((tmp_path / "out.gif").read_bytes())
    assert len(got.frames) == 4 and got.durations == [30, 60, 90, 120]


@pytest.mark.parametrize("out", ["gif", "png"])
def test_disposal_kept_and_carried_between_formats(tiny_weights: Path, out: str) -> None:
    """A GIF's disposals (restore to background, to previous, none) come back the same, as a GIF or as
    the APNG equivalents."""
    ims = [Image.fromarray(f) for f in media_files.frames(4, 32, 24)]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=[50, 60, 70, 80], loop=2,
                disposal=[2, 2, 3, 1])
    facts = media.probe(buf.getvalue(), max_pixels=1 << 20, max_frames=100)
    restored = restore(FrameRestorer([load_model(tiny_weights, "denoise", None)]), buf.getvalue(), facts, out,
                       max_frames=100)
    got = _animation(restored)
    assert Image.open(io.BytesIO(restored)).format == out.upper()
    assert got.disposal == ["background", "background", "previous", "none"]
    assert got.durations == [50, 60, 70, 80] and got.loop == 2
