"""bbcu_client against a live service in both modes (sync, async, batch) and `bbcu restore --url`."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from bbcu_client import AsyncClient, Client, Restored, ServiceError
from benchmarks.harness import ROOT, bbcu, free_port
from tests.conftest import Service
from tests.helpers import make_image


def direct(service: Service, data: bytes, **params: object) -> bytes:
    """What a plain synchronous POST /restore answers for the same image and options."""
    with service.client() as c:
        r = c.post("/restore", params=params, files={"image": ("d.png", data, "image/png")})
        assert r.status_code == 200, r.text
        return r.content


def test_sync_restore_from_a_path_and_from_bytes(service: Service, tmp_path: Path) -> None:
    data = make_image(24, 16, seed=11)
    src = tmp_path / "small.png"
    src.write_bytes(data)
    client = Client(service.url)
    assert {m["task"] for m in client.models()} == {"sr", "denoise", "deblock"}
    got = client.restore(src, task="sr", scale=2)
    assert isinstance(got, Restored) and got.name == "small.png" and got.content_type == "image/png"
    assert got.size == (48, 32) and Image.open(io.BytesIO(got.image)).size == (48, 32)
    assert got.image == direct(service, data, task="sr", scale=2)
    assert got.job["status"] == "succeeded" and got.job["model"]["name"] == "tiny_sr_x2_l"
    assert "inference;dur=" in (got.server_timing or "")
    webp = client.restore(data, task="denoise", format="webp")
    assert webp.content_type == "image/webp" and webp.image == direct(service, data, task="denoise",
                                                                       format="webp")
    assert webp.save(tmp_path / "o.webp").read_bytes() == webp.image


def test_api_key_is_sent_as_a_bearer_token() -> None:
    async def headers() -> tuple[str | None, str | None]:
        async with AsyncClient("http://127.0.0.1:9", api_key="k-123") as keyed, \
                AsyncClient("http://127.0.0.1:9") as plain:
            return keyed._http.headers.get("authorization"), plain._http.headers.get("authorization")

    assert asyncio.run(headers()) == ("Bearer k-123", None)


def test_client_errors_are_problem_details(service: Service) -> None:
    client = Client(service.url)
    with pytest.raises(ServiceError) as e:
        client.restore(b"not an image at all", task="denoise")
    assert e.value.status == 415 and e.value.title == "Unsupported media type" and e.value.detail
    with pytest.raises(ServiceError) as e:
        client.restore(make_image(8, 8), task="sr", scale=5)
    assert e.value.status == 422 and "scale" in e.value.detail


def test_async_restore_reports_progress(service: Service) -> None:
    seen: list[dict] = []

    async def main() -> Restored:
        async with AsyncClient(service.url) as client:
            # 256 tiles: fewer could all end between two reads of the record (every 0.2 s)
            return await client.restore(make_image(512, 512, seed=5), task="sr", scale=4, tile=32,
                                        on_progress=seen.append)

    got = asyncio.run(main())
    assert got.size == (2048, 2048)
    assert seen[0]["status"] in ("queued", "running") and seen[-1] == got.job
    progress = [e["progress"] for e in seen if e["status"] == "running"]
    assert progress == sorted(progress) and any(0 < p < 1 for p in progress)


def test_batch_with_bounded_concurrency_and_a_bad_file(service: Service) -> None:
    images = [make_image(16 + 4 * i, 16, seed=i) for i in range(5)]
    finished: list[int] = []
    results = Client(service.url).restore_many([*images, b"junk"], task="denoise", concurrency=2,
                                               on_result=lambda i, _: finished.append(i))
    assert sorted(finished) == list(range(6))
    for i, data in enumerate(images):
        got = results[i]
        assert isinstance(got, Restored) and got.size == (16 + 4 * i, 16)
        assert got.image == direct(service, data, task="denoise")
    assert isinstance(results[5], ServiceError) and results[5].status == 415


def test_cli_restore_against_a_service(service: Service, tmp_path: Path) -> None:
    srcs = []
    for i in range(3):
        srcs.append(tmp_path / f"in{i}.png")
        srcs[-1].write_bytes(make_image(20, 12, seed=20 + i))
    out = tmp_path / "out"
    run = subprocess.run(bbcu("restore", *map(str, srcs), "-o", str(out), "--task", "sr", "--scale", "2",
                              "--url", service.url, "--concurrency", "2", "--quiet"),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for src in srcs:
        got = (out / f"{src.stem}.png").read_bytes()
        assert got == direct(service, src.read_bytes(), task="sr", scale=2)


def test_cli_url_strength_and_quality_reach_the_job(service: Service, tmp_path: Path) -> None:
    src = tmp_path / "noisy.png"
    src.write_bytes(make_image(40, 24, seed=31))
    out = tmp_path / "noisy.jpg"
    run = subprocess.run(bbcu("restore", str(src), "-o", str(out), "--task", "denoise", "--strength", "0.4",
                              "--quality", "35", "--url", service.url),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    line = re.search(rf"{re.escape(str(src))} -> {re.escape(str(out))} \(job ([0-9a-f]+): denoise [\d.]+ s, "
                     r"strength 0\.40\)", run.stderr)
    assert line, run.stderr
    with service.client() as c:
        job = c.get(f"/jobs/{line.group(1)}").json()
    assert job["spec"]["strength"] == 0.4 and job["spec"]["quality"] == 35 and job["spec"]["format"] == "jpeg"
    assert [(s["task"], s["strength"], s["sigma"]) for s in job["stages"]] == [("denoise", 0.4, None)]
    assert out.read_bytes() == direct(service, src.read_bytes(), task="denoise", strength=0.4, format="jpeg",
                                      quality=35)


def test_cli_url_refusals(tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    src.write_bytes(make_image(8, 8))
    nobody = f"http://127.0.0.1:{free_port()}"
    run = subprocess.run(bbcu("restore", str(src), "-o", str(tmp_path / "b.png"), "--task", "denoise",
                              "--url", nobody), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"cannot reach {nobody}" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run(bbcu("restore", str(src), "-o", str(tmp_path / "b.png"), "--task", "denoise",
                              "--url", nobody, "--weights", str(src)),
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--weights cannot be used with --url" in run.stderr
