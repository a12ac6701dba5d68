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
