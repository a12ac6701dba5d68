"""A color photo through the gray (Y) JPEG deblocker takes its chroma from the color deblocker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models import catalog, imageio, pipeline
from models.config import deblock_config, denoise_config
from models.engine import from_network, load_chroma_partner, load_for_task
from models.pipeline import restore_image, run_stages
from tests.factories import random_net, save_ours
from tests.helpers import make_image
from workers.contract import ImageFacts, JobSpec, JobStatus, new_job_id
from workers.memory_store import MemoryStore
from workers.settings import Settings


def _tiny(cfg, seed: int):  # type: ignore[no-untyped-def]
    return from_network(random_net(cfg, seed), cfg, backend="float")


def _net(model, planes: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    x = torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None]
    return model.restore(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def test_luma_from_the_gray_network_chroma_from_the_color_one() -> None:
    gray = _tiny(deblock_config(nf=8, depth=3), 11)
    color = _tiny(deblock_config(nf=8, depth=3, channels=3), 12)
    rng = np.random.default_rng(13)
    img = imageio.Image(pixels=rng.random((33, 41, 3), dtype=np.float32))
    out, [report] = run_stages([gray], img, tile=16, chroma=color)
    luma = _net(gray, imageio.rgb_to_ycbcr(img.pixels)[..., :1])
    cbcr = imageio.rgb_to_ycbcr(_net(color, img.pixels))[..., 1:]
    np.testing.assert_allclose(out.pixels, imageio.ycbcr_to_rgb(np.concatenate([luma, cbcr], axis=2)),
                               atol=2e-6)
    # without the partner the chroma is the decoder's: the result differs
    assert np.abs(out.pixels - restore_image(gray, img, tile=16).pixels).max() > 1e-3
    assert report.chroma_model == color.info.name and report.tiles == 9
    # a gray photo, or a stage that is not a luma deblocker, runs alone
    flat = imageio.Image(pixels=img.pixels[..., :1].copy())
    alone, [gray_report] = run_stages([gray], flat, tile=16, chroma=color)
    np.testing.assert_array_equal(alone.pixels, restore_image(gray, flat, tile=16).pixels)
    assert gray_report.chroma_model is None
    denoise = _tiny(denoise_config(nf=8, depth=3), 14)
    _, [other] = run_stages([denoise], img, tile=16, strength=1.0, chroma=color)
    assert other.chroma_model is None


def test_progress_runs_once_through_both_networks() -> None:
    gray = _tiny(deblock_config(nf=8, depth=3), 15)
    color = _tiny(deblock_config(nf=8, depth=3, channels=3), 16)
    img = imageio.Image(pixels=np.random.default_rng(17).random((40, 40, 3), dtype=np.float32))
    seen: list[float] = []
    restore_image(gray, img, tile=16, chroma=color, progress=lambda d, t: seen.append(d / t))
    assert seen == sorted(seen) and seen[-1] == 1.0 and any(0.4 < f <= 0.5 for f in seen)


def test_the_shipped_gray_deblocker_has_the_color_one_as_partner(tmp_path: Path) -> None:
    assert catalog.chroma_partner("deblock").name == "bbcu-deblock-color"  # type: ignore[union-attr]
    assert catalog.chroma_partner("deblock", "l").name == "bbcu-deblock-color"  # type: ignore[union-attr]
    assert catalog.chroma_partner("sr") is None and catalog.chroma_partner("denoise") is None
    assert load_chroma_partner("deblock", weights=catalog.find("deblock").path) is None  # explicit file
    save_ours(tmp_path, "gray", deblock_config(nf=8, depth=3), seed=1)
    assert catalog.chroma_partner("deblock", weights_dir=tmp_path) is None  # no color network
    save_ours(tmp_path, "rgb", deblock_config(nf=8, depth=3, channels=3), seed=2)
    assert catalog.chroma_partner("deblock", weights_dir=tmp_path).name == "rgb"  # type: ignore[union-attr]
    partner = load_chroma_partner("deblock", weights_dir=tmp_path)
    assert partner is not None and partner.config.in_nc == 3 and partner.info.name == "rgb"


def test_a_job_records_the_partner_and_returns_the_pipelines_image(tmp_path: Path) -> None:
    from workers.jobs import JobRunner

    save_ours(tmp_path, "gray", deblock_config(nf=8, depth=3), seed=1)
    save_ours(tmp_path, "rgb", deblock_config(nf=8, depth=3, channels=3), seed=2)
    store = MemoryStore(60, 60)
    runner = JobRunner(Settings(weights_dir=tmp_path, torch_threads=1), store)
    data = make_image(24, 20, seed=3)
    spec = JobSpec(id=new_job_id(), task="deblock")
    store.create(spec, ImageFacts(width=24, height=20, bytes=len(data), format="png"), data)
    rec = runner.run(spec.id)
    assert rec is not None and rec.status == JobStatus.succeeded
    assert [(s.model, s.chroma_model) for s in rec.stages] == [("gray", "rgb")]
    expected, _ = pipeline.run_stages([load_for_task("deblock", weights_dir=tmp_path)],
                                      imageio.decode(data, max_pixels=1 << 20),
                                      chroma=load_chroma_partner("deblock", weights_dir=tmp_path))
    assert store.result(spec.id) == imageio.encode(expected, "png")


def test_the_http_answer_names_both_networks(tmp_path: Path) -> None:
    """Over HTTP (embedded mode): Server-Timing and the job record name the chroma network."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    save_ours(tmp_path, "gray", deblock_config(nf=8, depth=3), seed=1)
    save_ours(tmp_path, "rgb", deblock_config(nf=8, depth=3, channels=3), seed=2)
    with TestClient(create_app(Settings(weights_dir=tmp_path, torch_threads=1))) as c:
        color = c.post("/restore", params={"task": "deblock"},
                       files={"image": ("c.png", make_image(24, 20, seed=4), "image/png")})
        assert color.status_code == 200, color.text
        assert 'deblock;desc="gray, chroma rgb"' in color.headers["server-timing"]
        job = c.get(f"/jobs/{color.headers['x-job-id']}").json()
        assert [(s["model"], s["chroma_model"]) for s in job["stages"]] == [("gray", "rgb")]
        gray = c.post("/restore", params={"task": "deblock"},
                      files={"image": ("g.png", make_image(24, 20, seed=5, mode="L"), "image/png")})
        assert gray.status_code == 200 and 'deblock;desc="gray";' in gray.headers["server-timing"]
        # a JPEG above quality 30 (Pillow writes 75): the color network alone
        light = c.post("/restore", params={"task": "deblock"},
                       files={"image": ("l.jpg", make_image(24, 20, seed=6, fmt="JPEG"), "image/jpeg")})
        assert light.status_code == 200, light.text
        assert 'deblock;desc="rgb";' in light.headers["server-timing"]
        job = c.get(f"/jobs/{light.headers['x-job-id']}").json()
        stages = [(s["model"], s["chroma_model"], s["jpeg_quality"]) for s in job["stages"]]
        assert stages == [("rgb", None, 75)]


def test_deblock_strength_follows_the_jpeg_quality() -> None:
    """Full strength up to quality 20 (the network as trained), less above, none from 95 on;
    never more for a lighter compression."""
    from models import deblock_strength

    assert deblock_strength.for_quality(None) == 1.0  # not from a JPEG file: as before
    assert [deblock_strength.for_quality(q) for q in (1, 10, 20, 25, 50, 85, 90, 95, 100)] == \
        [1.0, 1.0, 1.0, 0.95, 0.8, 0.4, 0.3, 0.0, 0.0]
    values = [deblock_strength.for_quality(q) for q in range(1, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def _jpeg_of_photo(quality: int) -> tuple[np.ndarray, imageio.Image]:
    from benchmarks.tiles import photo
    from models.degrade import jpeg_bytes, to_uint8

    gt = to_uint8(photo(96, 64, seed=5))
    return gt, imageio.decode(jpeg_bytes(gt, quality), max_pixels=1 << 20)


def test_a_light_jpeg_gets_part_of_the_deblocker_and_a_very_light_one_none() -> None:
    """The shipped deblockers, as the service runs them, on a photo saved at several qualities: the
    reported strength is the table's, the output is that blend of the network's, and it is closer
    to the original photo than both the JPEG and the network's full output."""
    from models.degrade import to_uint8
    from models.metrics import psnr

    model, chroma = load_for_task("deblock"), load_chroma_partner("deblock")
    for quality, strength in ((10, 1.0), (85, 0.4), (90, 0.3)):
        gt, img = _jpeg_of_photo(quality)
        out, [report] = run_stages([model], img, chroma=chroma)
        assert (report.jpeg_quality, report.strength, report.tiles) == (quality, strength, 1)
        full = restore_image(model, img, chroma=chroma).pixels
        np.testing.assert_allclose(out.pixels, img.pixels + np.float32(strength) * (full - img.pixels),
                                   atol=1e-6)
        jpeg_db, out_db = psnr(to_uint8(img.pixels), gt), psnr(to_uint8(out.pixels), gt)
        assert out_db > jpeg_db
        if strength < 1.0:
            assert out_db > psnr(to_uint8(full), gt) + 0.3
    gt, img = _jpeg_of_photo(96)
    out, [report] = run_stages([model], img, chroma=chroma)
    assert (report.jpeg_quality, report.strength, report.tiles) == (96, 0.0, 0)
    np.testing.assert_array_equal(out.pixels, img.pixels)
    # pixels that came from elsewhere (or were restored since) take the full network
    plain = imageio.Image(pixels=img.pixels.copy())
    _, [report] = run_stages([model], plain, chroma=chroma)
    assert (report.jpeg_quality, report.strength, report.tiles) == (None, None, 1)
