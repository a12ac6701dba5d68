"""End-to-end HTTP tests of the service, run against both modes (Celery + Redis, and embedded)."""

from __future__ import annotations

import io
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MAX_PIXELS, MAX_UPLOAD_BYTES, TINY_MODELS, Service
from tests.helpers import (
    assert_problem,
    assert_same_image,
    load_model,
    make_image,
    pixels,
    reference,
    sha256,
    wait_job,
)

TASKS = [("denoise", None, "tiny_denoise_l", 1), ("deblock", None, "tiny_deblock_l", 1),
         ("sr", 2, "tiny_sr_x2_l", 2), ("sr", None, "tiny_sr_x4_l", 4)]
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.mark.parametrize("task,scale,name,factor", TASKS)
def test_sync_restore_every_task(service: Service, tiny_weights: Path, task: str, scale: int | None,
                                 name: str, factor: int) -> None:
    data = make_image(40, 24, seed=factor)
    params = {"task": task, **({"scale": scale} if scale else {})}
    with service.client() as c:
        r = c.post("/restore", params=params, files={"image": ("in.png", data, "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    job_id = r.headers["x-job-id"]
    assert HEX32.match(job_id)
    assert r.headers["link"] == f'</jobs/{job_id}>; rel="monitor"'
    assert r.headers["x-model"] == f"{name}; sha256={sha256(tiny_weights / (name + '.safetensors'))}"
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", r.headers["server-timing"]))
    assert {"queue", "decode", "inference", "encode", "total"} <= set(timing)
    assert float(timing["total"]) >= float(timing["inference"])
    out = pixels(r.content)
    assert out.shape[:2] == (24 * factor, 40 * factor)
    assert_same_image(r.content, reference(tiny_weights, task, scale, data))


@pytest.mark.parametrize("task,scale,name,factor", TASKS)
def test_async_restore_every_task(service: Service, tiny_weights: Path, task: str, scale: int | None,
                                  name: str, factor: int) -> None:
    data = make_image(32, 20, seed=10 + factor)
    params = {"task": task, **({"scale": scale} if scale else {})}
    with service.client() as c:
        r = c.post("/restore", params=params, content=data, headers={"Content-Type": "image/png",
                                                                      "Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        assert r.headers["preference-applied"] == "respond-async"
        job_id = r.json()["id"]
        assert r.headers["location"] == f"/jobs/{job_id}"
        assert r.json()["status"] in ("queued", "running", "succeeded")
        job = wait_job(c, job_id)
        assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["error"] is None
        assert job["input"] == {"width": 32, "height": 20, "bytes": len(data), "format": "png", "frames": 1,
                                "fps": None}
        assert job["output"]["width"] == 32 * factor and job["output"]["height"] == 20 * factor
        model = job["model"]
        assert model["name"] == name and model["device"] == "cpu" and model["scale"] == factor
        assert model["sha256"] == sha256(tiny_weights / (name + ".safetensors"))
        assert model["params"] > 0 and model["ops"]["height"] == 20 and model["ops"]["ops_paper"] > 0
        assert set(job["timings"]) >= {"queue", "decode", "inference", "encode", "total"}
        assert job["links"]["result"] == f"/jobs/{job_id}/result"
        res = c.get(f"/jobs/{job_id}/result")
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
        assert res.headers["x-job-id"] == job_id
        assert job["output"]["bytes"] == len(res.content)
        assert_same_image(res.content, reference(tiny_weights, task, scale, data))


def test_async_query_flag_and_gray_input(service: Service, tiny_weights: Path) -> None:
    data = make_image(30, 30, seed=5, mode="L")
    with service.client() as c:
        r = c.post("/restore", params={"task": "deblock", "async": "true"},
                   files={"image": ("g.png", data, "image/png")})
        assert r.status_code == 202 and "preference-applied" not in r.headers
        job = wait_job(c, r.json()["id"])
        res = c.get(f"/jobs/{job['id']}/result")
    assert_same_image(res.content, reference(tiny_weights, "deblock", None, data))
    assert pixels(res.content).ndim == 2  # gray in, gray out


@pytest.mark.parametrize("how,ctype", [({"params": {"format": "jpeg"}}, "image/jpeg"),
                                       ({"headers": {"Accept": "image/webp"}}, "image/webp"),
                                       ({"headers": {"Accept": "image/jpeg;q=0.5, image/webp;q=0.9"}},
                                        "image/webp"),
                                       ({"headers": {"Accept": "*/*"}}, "image/png")])
def test_output_format(service: Service, tiny_weights: Path, how: dict, ctype: str) -> None:
    data = make_image(24, 24, seed=3)
    params = {"task": "denoise", **how.get("params", {})}
    with service.client() as c:
        r = c.post("/restore", params=params, headers=how.get("headers", {}),
                   files={"image": ("x.png", data, "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == ctype
    fmt = ctype.split("/")[1]
    assert Image.open(io.BytesIO(r.content)).format == fmt.upper()
    want = reference(tiny_weights, "denoise", None, data, fmt)
    assert pixels(r.content).shape == want.shape


def test_twenty_concurrent_requests(service: Service, tiny_weights: Path) -> None:
    images = [make_image(32, 32, seed=100 + i) for i in range(20)]

    def one(data: bytes) -> tuple[int, bytes]:
        with service.client() as c:
            r = c.post("/restore", params={"task": "denoise"}, files={"image": ("i.png", data, "image/png")})
        return r.status_code, r.content

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, images))
    assert [s for s, _ in results] == [200] * 20
    for data, (_, out) in zip(images, results, strict=True):
        assert_same_image(out, reference(tiny_weights, "denoise", None, data))


def test_cancel_and_not_ready(service: Service) -> None:
    data = make_image(512, 512, seed=7)  # exactly the pixel budget; x4 in 32-pixel tiles runs a while
    assert 512 * 512 <= MAX_PIXELS
    with service.client() as c:
        r = c.post("/restore", params={"task": "sr", "scale": 4, "tile": 32, "async": "true"},
                   files={"image": ("big.png", data, "image/png")})
        assert r.status_code == 202
        job_id = r.json()["id"]
        nr = c.get(f"/jobs/{job_id}/result")
        body = assert_problem(nr, 409)
        assert body["status_of_job"] in ("queued", "running") and nr.headers["retry-after"] == "1"
        d = c.delete(f"/jobs/{job_id}")
        assert d.status_code == 200, d.text
        assert d.json()["status"] == "cancelled" and d.json()["error"]["code"] == "cancelled"
        time.sleep(1.0)  # let the worker reach its next tile and give up
        job = c.get(f"/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["output"] is None
        assert_problem(c.get(f"/jobs/{job_id}/result"), 409)
        again = assert_problem(c.delete(f"/jobs/{job_id}"), 409)
        assert again["status_of_job"] == "cancelled"
        # the service keeps working after a cancellation
        ok = c.post("/restore", params={"task": "denoise"}, files={"image": ("s.png", make_image(8, 8),
                                                                              "image/png")})
        assert ok.status_code == 200


@pytest.mark.parametrize("params,fragment", [
    ({"task": "paint"}, "task"),
    ({"task": "sr", "scale": 5}, "scale 5"),
    ({"task": "sr", "scale": 3}, "no shipped weights"),
    ({"task": "sr", "variant": "z"}, "variant=z"),
    ({"task": "denoise", "scale": 2}, "sr only"),
    ({"task": "denoise", "format": "bmp"}, "format"),
    ({"task": "denoise", "device": "tpu"}, "device"),
    ({"task": "denoise", "tile": 8}, "tile"),
    ({}, "task"),
    ({"task": "sr", "scale": 0}, "scale 0"),
    ({"task": "sr,denoise"}, "sr must come last"),
    ({"task": "denoise,denoise"}, "repeats"),
    ({"task": "sr", "strength": "0.5"}, "denoise stage"),
    ({"task": "denoise", "strength": "2"}, "from 0 to 1"),
    ({"task": "denoise", "quality": 0}, "quality"),
])
def test_invalid_options_422(service: Service, params: dict, fragment: str) -> None:
    with service.client() as c:
        r = c.post("/restore", params=params, files={"image": ("x.png", make_image(8, 8), "image/png")})
    body = assert_problem(r, 422)
    assert fragment in body["detail"]


def test_not_an_image_415(service: Service) -> None:
    with service.client() as c:
        r1 = c.post("/restore", params={"task": "denoise"}, files={"image": ("x.png", b"hello", "image/png")})
        r2 = c.post("/restore", params={"task": "denoise"}, content=b"plain text",
                    headers={"Content-Type": "text/plain"})
        r3 = c.post("/restore", params={"task": "denoise"}, content=make_image(16, 16)[:60],
                    headers={"Content-Type": "image/png"})
        r4 = c.post("/restore", params={"task": "denoise"}, content=b"",
                    headers={"Content-Type": "image/png"})
    assert "not a readable image" in assert_problem(r1, 415)["detail"]
    assert "multipart/form-data" in assert_problem(r2, 415)["detail"]
    assert r3.status_code == 415, r3.text  # a truncated PNG: the header reads, the pixels do not
    assert_problem(r4, 415)


def test_missing_field_and_bad_multipart(service: Service) -> None:
    with service.client() as c:
        r = c.post("/restore", params={"task": "denoise"}, files={"picture": ("x.png", make_image(8, 8),
                                                                              "image/png")})
        bad = c.post("/restore", params={"task": "denoise"}, content=b"--zz\r\nnonsense",
                     headers={"Content-Type": "multipart/form-data"})
    assert "'image'" in assert_problem(r, 422)["detail"]
    assert_problem(bad, 400)


def test_pixel_budget_413(service: Service) -> None:
    data = _flat_png(600, 600)
    assert len(data) < MAX_UPLOAD_BYTES
    with service.client() as c:
        r = c.post("/restore", params={"task": "denoise"}, files={"image": ("big.png", data, "image/png")})
    body = assert_problem(r, 413)
    assert body["pixels"] == 360000 and body["max_pixels"] == MAX_PIXELS


def _flat_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _raw_http(url: str, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request head and some body, without finishing it; return what the server answers."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=20) as s:
        s.sendall(head)
        for chunk in chunks:
            s.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            data = s.recv(65536)
            if not data:
                break
            answer += data
        return answer


def _length(answer: bytes) -> int:
    m = re.search(rb"content-length: (\d+)", answer, re.I)
    return int(m.group(1)) if m else 0


def test_upload_limit_declared_413(service: Service) -> None:
    head = (f"POST /restore?task=denoise HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {MAX_UPLOAD_BYTES + 1}\r\n\r\n").encode()
    answer = _raw_http(service.url, head, [])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_upload_bytes" in answer


def test_upload_limit_enforced_while_streaming(service: Service) -> None:
    """A chunked body that never ends: only a limit checked while it streams can answer."""
    head = b"POST /restore?task=denoise HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n" \
           b"Transfer-Encoding: chunked\r\n\r\n"
    piece = b"\x89PNG" + b"\0" * (64 * 1024 - 4)
    n = MAX_UPLOAD_BYTES // len(piece) + 2
    chunks = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for _ in range(n)]  # no final 0-chunk
    answer = _raw_http(service.url, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert f'"max_upload_bytes":{MAX_UPLOAD_BYTES}'.encode() in answer


def test_unknown_job_404(service: Service) -> None:
    with service.client() as c:
        for r in (c.get("/jobs/" + "0" * 32), c.get("/jobs/nope/result"), c.delete("/jobs/" + "f" * 32)):
            assert_problem(r, 404)
        assert_problem(c.get("/no/such/path"), 404)


def test_models_catalogue(service: Service, tiny_weights: Path) -> None:
    with service.client() as c:
        body = c.get("/models").json()
    by_name = {m["name"]: m for m in body["models"]}
    assert sorted(by_name) == sorted(TINY_MODELS)
    m = by_name["tiny_sr_x4_l"]
    assert (m["task"], m["scale"], m["variant"]) == ("sr", 4, "l")
    assert m["sha256"] == sha256(tiny_weights / "tiny_sr_x4_l.safetensors")


def test_health_ready_metrics_docs(service: Service) -> None:
    with service.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["ready"] is True and ready.json()["mode"] == service.mode
        assert ready.json()["workers"]["cpu"] >= 1 and ready.json()["models"] == len(TINY_MODELS)
        c.post("/restore", params={"task": "denoise"},
               files={"image": ("m.png", make_image(8, 8), "image/png")})
        text = c.get("/metrics").text
        assert 'bbcu_workers{queue="cpu"}' in text and "bbcu_broker_up 1" in text
        assert re.search(r'bbcu_http_requests_total\{method="POST",route="/restore",status="200"\} \d+', text)
        assert re.search(r'bbcu_jobs_submitted_total\{queue="cpu",task="denoise"\} \d+', text)
        assert "bbcu_http_request_duration_seconds_bucket" in text
        if service.mode == "celery":
            rss = re.search(r'bbcu_worker_rss_bytes\{worker="[^"]+"\} (\S+)', text)
            assert rss and float(rss.group(1)) > 50_000_000  # the worker and its pool processes
        spec = c.get("/openapi.json").json()
        post = spec["paths"]["/restore"]["post"]
        assert "multipart/form-data" in post["requestBody"]["content"]
        assert "example" in post["responses"]["413"]["content"]["application/problem+json"]
        assert c.get("/docs").status_code == 200


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (a Celery worker and its pool)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(k) for k in (task / "children").read_text().split()]
    page = 4096
    return sum(int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page for p in pids)


def test_memory_stays_flat_over_many_requests(service: Service) -> None:
    """No image bytes are kept beyond a job (apart from results within their TTL)."""
    proc = service.procs[-1] if service.mode == "celery" else service.procs[0]  # the worker, or the API
    data = make_image(96, 96, seed=11)
    with service.client() as c:

        def burst(n: int) -> None:
            for _ in range(n):
                r = c.post("/restore", params={"task": "sr", "scale": 2},
                           files={"image": ("m.png", data, "image/png")})
                assert r.status_code == 200

        burst(10)
        before = _tree_rss(proc.popen.pid)
        burst(40)
        after = _tree_rss(proc.popen.pid)
    assert after - before < 40 << 20, f"RSS grew by {(after - before) >> 20} MiB over 40 requests"


def _exif_jpeg(w: int, h: int) -> bytes:
    rng = np.random.default_rng(21)
    exif = Image.Exif()
    exif[0x010F] = "BBCU test camera"  # Make
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95,
                                                                         exif=exif.tobytes())
    return buf.getvalue()


def test_pipeline_strength_exif_and_download_name(service: Service, tiny_weights: Path) -> None:
    """deblock,sr in one job equals deblock then sr; strength 0 returns the input; EXIF is kept."""
    from models import imageio, pipeline

    data = make_image(30, 22, seed=31)
    decoded = imageio.decode(data, max_pixels=1 << 30)
    deblocked = pipeline.restore_image(load_model(tiny_weights, "deblock", None), decoded)
    stepwise = pipeline.restore_image(load_model(tiny_weights, "sr", 2), deblocked)
    with service.client() as c:
        r = c.post("/restore", params={"task": "deblock,sr", "scale": 2},
                   files={"image": ("holiday photo.png", data, "image/png")})
        assert r.status_code == 200, r.text
        assert_same_image(r.content, pixels(imageio.encode(stepwise, "png")))
        assert r.headers["content-disposition"] == 'inline; filename="holiday_photo-deblock-sr.png"'
        assert re.search(r'deblock;desc="tiny_deblock_l";dur=[\d.]+, sr;desc="tiny_sr_x2_l";dur=[\d.]+',
                         r.headers["server-timing"])
        job = c.get(f"/jobs/{r.headers['x-job-id']}").json()
        assert job["task"] == "deblock,sr" and [s["task"] for s in job["stages"]] == ["deblock", "sr"]
        assert [s["model"] for s in job["stages"]] == ["tiny_deblock_l", "tiny_sr_x2_l"]
        assert all(s["inference_ms"] > 0 and s["tiles"] == 1 and s["redundancy"] == 1.0
                   for s in job["stages"])
        assert job["model"]["name"] == "tiny_sr_x2_l" and job["output"]["width"] == 60

        untouched = c.post("/restore", params={"task": "denoise", "strength": "0"},
                           files={"image": ("x.png", data, "image/png")})
        assert untouched.status_code == 200 and untouched.headers["x-strength"] == "0.000"
        assert np.array_equal(pixels(untouched.content), pixels(data))
        auto = c.post("/restore", params={"task": "denoise"}, files={"image": ("x.png", data, "image/png")})
        # uniform random pixels read as very noisy: the full network, as the reference runs it
        assert auto.headers["x-strength"] == "1.000" and float(auto.headers["x-noise-sigma"]) > 30
        assert_same_image(auto.content, reference(tiny_weights, "denoise", None, data))

        jpeg = _exif_jpeg(20, 12)
        small = c.post("/restore", params={"task": "deblock", "format": "jpeg", "quality": 40},
                       files={"image": ("cam.jpg", jpeg, "image/jpeg")})
        large = c.post("/restore", params={"task": "deblock", "format": "jpeg", "quality": 100},
                       files={"image": ("cam.jpg", jpeg, "image/jpeg")})
    assert small.status_code == 200 and len(small.content) < len(large.content)
    out = Image.open(io.BytesIO(small.content))
    exif = out.getexif()
    assert out.size == (12, 20)  # turned upright on decode...
    assert exif[0x010F] == "BBCU test camera" and exif[0x0112] == 1  # ...and says so
