"""Everyday limits and the synchronous contract, over real HTTP to an embedded app in this process."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
from PIL import Image

from tests.helpers import assert_problem, make_image, wait_job
from tests.test_service_store import serve_in_thread
from workers.settings import Settings


def _flat_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 140, 200)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def test_default_limits_take_a_12_mp_photo_and_limit_sr_by_output(tiny_weights: Path) -> None:
    settings = Settings(weights_dir=tiny_weights, torch_threads=1)
    with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        limits = c.get("/limits").json()
        assert limits["max_input_pixels"] >= 4000 * 3000 and limits["max_upload_bytes"] >= 32 << 20
        assert limits["max_input_pixels_by_task"]["sr_x4"] == limits["max_output_pixels"] // 16
        phone = _flat_png(4000, 3000)
        for task in ("denoise", "deblock"):
            r = c.post("/restore", params={"task": task, "async": "true"},
                       files={"image": ("phone.png", phone, "image/png")})
            assert r.status_code == 202, r.text
            assert c.delete(f"/jobs/{r.json()['id']}").status_code == 200  # accepted; no need to run it
        big_sr = c.post("/restore", params={"task": "sr", "scale": 4, "async": "true"},
                        files={"image": ("phone.png", phone, "image/png")})
        body = assert_problem(big_sr, 413)
        assert "x4 output would be 16000x12000" in body["detail"]
        assert body["max_pixels"] == limits["max_input_pixels_by_task"]["sr_x4"]
        ok_sr = c.post("/restore", params={"task": "sr", "scale": 2, "async": "true"},
                       files={"image": ("ok.png", _flat_png(2000, 1500), "image/png")})
        assert ok_sr.status_code == 202, ok_sr.text
        c.delete(f"/jobs/{ok_sr.json()['id']}")


def test_a_slow_synchronous_job_answers_504_never_an_unasked_202(tiny_weights: Path) -> None:
    settings = Settings(weights_dir=tiny_weights, torch_threads=1, sync_wait_s=0.3, embedded_workers=1)
    slow = {"task": "sr", "scale": 4, "tile": 32}  # 64 tiles of a 256x256 image: seconds, not 0.3 s
    image = make_image(256, 256, seed=9)
    with serve_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        t = time.monotonic()
        r = c.post("/restore", params=slow, files={"image": ("s.png", image, "image/png")})
        body = assert_problem(r, 504)
        assert time.monotonic() - t >= 0.3
        assert "did not finish within 0.3 s" in body["detail"] and "Prefer: respond-async" in body["detail"]
        job_id = body["job_id"]
        assert r.headers["link"] == f'</jobs/{job_id}>; rel="monitor"'
        # the job goes on and its result can still be fetched
        done = wait_job(c, job_id, timeout=300)
        assert done["status"] == "succeeded"
        assert Image.open(io.BytesIO(c.get(f"/jobs/{job_id}/result").content)).size == (1024, 1024)
        # the opt-ins: a 202 with the job, asked for
        waited = c.post("/restore", params=slow, headers={"Prefer": "wait=1"},
                        files={"image": ("s.png", image, "image/png")})
        assert waited.status_code == 202 and waited.headers["location"] == f"/jobs/{waited.json()['id']}"
        at_once = c.post("/restore", params={**slow, "async": "true"}, files={"image": ("s.png", image,
                                                                                       "image/png")})
        assert at_once.status_code == 202
        for job in (waited.json()["id"], at_once.json()["id"]):
            c.delete(f"/jobs/{job}")
