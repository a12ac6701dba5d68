"""End-to-end check of the Docker Compose deployment: `make compose-test` runs it (needs a Docker daemon).

Builds the API and CPU-worker images (on local stand-ins of the base images where Docker Hub cannot
be reached, see bases.py), brings the stack up under its own project name, waits for /readyz,
checks that a request without the API key is refused (the compose file turns keys on; this
run makes a key and hands the stack its digest), restores a real image for each task through the
published port and compares each result with the
engine run here outside Docker, scales worker-cpu to 2, kills the worker container running an
async job and sees the job finish on the other, checks that no container runs as root and that
Redis is not published, then `down -v`. Exit 0 when every check passed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bases
import httpx
import numpy as np
from PIL import Image

from benchmarks.harness import free_port, wait_until  # `make compose-test` puts the repository on the path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROJECT = "bbcu-compose-test"
WHEELHOUSE = HERE / "wheelhouse"
REAL_IMAGE = ROOT.parent / "shared" / "datasets" / "benchmarks" / "CSet5" / "butterfly.png"
PYPI = "https://pypi.org/simple"
# the compose file turns API keys on: the stack gets this key's digest, the checks send the key
API_KEY = "bbcu_compose-test-" + secrets.token_urlsafe(16)


def log(msg: str) -> None:
    print(f"[compose-test] {msg}", flush=True)


@contextmanager
def step(name: str) -> Iterator[None]:
    t0 = time.monotonic()
    log(f"{name} ...")
    yield
    log(f"{name}: ok ({time.monotonic() - t0:.1f} s)")


def check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def docker(*args: str, check_rc: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check_rc and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


class Stack:
    """The compose project under test: `docker compose` (v2) where present, else docker-compose 1.x."""

    def __init__(self, env: dict[str, str]) -> None:
        v2 = subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
        base = ["docker", "compose"] if v2 else ["docker-compose"]
        self.cmd = [*base, "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml")]
        self.env = {**os.environ, **env}

    def __call__(self, *args: str) -> None:
        subprocess.run([*self.cmd, *args], env=self.env, check=True, cwd=ROOT)

    def logs(self) -> None:
        subprocess.run([*self.cmd, "logs", "--no-color", "--tail", "40"], env=self.env, cwd=ROOT)

    def containers(self, service: str | None = None) -> list[str]:
        filters = ["--filter", f"label=com.docker.compose.project={PROJECT}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        return docker("ps", "-q", *filters).split()


def torch_wheelhouse(version: str) -> dict[str, str]:
    """Put the torch wheel pip's configured find-links offer on this host into the build context.

    `pip download --no-index` reads the same pip configuration as `make install`; with the wheel there
    the image takes torch's dependencies from PyPI and torch from the wheelhouse. Without one the
    Dockerfile's default (the PyTorch CPU index) applies.
    """
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-index", "--no-deps",
                           "--dest", str(WHEELHOUSE), f"torch=={version}"], capture_output=True, text=True)
    if done.returncode != 0:
        log(f"no local torch {version} wheel: the image build downloads it")
        return {}
    log(f"torch wheel from pip's find-links: {[p.name for p in WHEELHOUSE.glob('torch-*.whl')]}")
    return {"TORCH_INDEX_URL": PYPI}


# ---- the inputs and the engine outside Docker ----------------------------------------------------------

def real_image() -> np.ndarray:
    if REAL_IMAGE.exists():
        with Image.open(REAL_IMAGE) as im:
            return np.asarray(im.convert("RGB"))
    log(f"{REAL_IMAGE} absent: a synthetic test card instead")
    y, x = np.mgrid[0:256, 0:256].astype(np.float64)
    card = np.stack([128 + 100 * np.sin(x / 9), 128 + 100 * np.cos(y / 13), (x + y) / 2], axis=-1)
    return np.clip(card, 0, 255).astype(np.uint8)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def task_inputs(hr: np.ndarray) -> dict[str, tuple[dict[str, str], bytes]]:
    """One degraded crop per task, degraded as the evaluation protocol does."""
    from models import degrade

    crop = hr[64:160, 64:160]
    jpeg_buf = io.BytesIO()
    Image.fromarray(crop).save(jpeg_buf, format="JPEG", quality=10)
    noisy = degrade.to_uint8(degrade.add_gaussian_noise(degrade.to_float(crop), 25, seed=0))
    return {
        "sr": ({"task": "sr", "scale": "4"}, png(degrade.bicubic_lr(crop, 4))),
        "denoise": ({"task": "denoise"}, png(noisy)),
        "deblock": ({"task": "deblock"}, jpeg_buf.getvalue()),
    }


def engine_here(params: dict[str, str], data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """What the worker computes, computed by this checkout's engine on the same weights."""
    from models import imageio, pipeline
    from models.engine import load_chroma_partner, load_for_task
    from workers.settings import Settings

    settings = Settings()
    task = params["task"]
    weights = ROOT / "models" / "weights"
    model = load_for_task(task, int(params["scale"]) if task == "sr" else None, params.get("variant"),
                          weights_dir=weights, backend=settings.backend)
    # a color photo's deblock takes its chroma from the color network, as the worker's does
    chroma = load_chroma_partner(task, params.get("variant"), backend=settings.backend, weights_dir=weights)
    img = imageio.decode(data, max_pixels=settings.max_pixels)
    # the worker's own path: default strength (auto for denoise), the tile from the same budget
    tile = int(params["tile"]) if "tile" in params else None
    out, _ = pipeline.run_stages([model], img, tile=tile, memory_bytes=settings.tile_memory_mb << 20,
                                 chroma=chroma)
    facts = {"sha256": model.info.sha256, "backend": model.info.backend}
    return decode_png(imageio.encode(out, "png")), facts


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).astype(np.int16)


def compare(name: str, served: bytes, job: dict[str, Any], params: dict[str, str], data: bytes) -> None:
    expected, facts = engine_here(params, data)
    got = decode_png(served)
    check(got.shape == expected.shape, f"{name}: shape {got.shape} != engine's {expected.shape}")
    diff = np.abs(got - expected)
    model = job.get("model") or {}
    check(model.get("sha256") == facts["sha256"], f"{name}: weights {model.get('sha256')} != {facts}")
    check(model.get("backend") == facts["backend"], f"{name}: backend {model.get('backend')} != {facts}")
    # same weights, backend and torch build: at most a rounding step apart (float summation order)
    check(int(diff.max()) <= 1, f"{name}: max |served - engine| = {int(diff.max())} levels")
    log(f"{name}: {got.shape[1]}x{got.shape[0]} {model.get('backend')}, identical pixels "
        f"{float((diff == 0).mean()):.4%}, max diff {int(diff.max())}")


# ---- the checks ----------------------------------------------------------------------------------------

def restore_each_task(client: httpx.Client, inputs: dict[str, tuple[dict[str, str], bytes]]) -> None:
    for name, (params, data) in inputs.items():
        resp = client.post("/restore", params=params, files={"image": ("in", data)})
        # synchronous; a job longer than BBCU_SYNC_WAIT_S (a first model load on a busy host) answers
        # 202 and is polled, as a client does
        check(resp.status_code in (200, 202), f"{name}: {resp.status_code} {resp.text[:300]}")
        job = finished(client, resp.headers["X-Job-Id"])
        check(job["status"] == "succeeded", f"{name}: {job}")
        if resp.status_code == 202:
            resp = client.get(f"/jobs/{job['id']}/result")
        compare(name, resp.content, job, params, data)


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(probe, 300, None, f"job {job_id}", 0.2)


def ready_workers(client: httpx.Client, count: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            r = client.get("/readyz")
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.json()["workers"]["cpu"] >= count

    return probe


def running_node(stack: Stack, job_id: str) -> str:
    """The Celery node (name@host) of a job's last run, from its record in Redis: the API shows
    clients the worker's name only, not the host it runs on."""
    redis = stack.containers("redis")[0]
    raw = docker("exec", "-e", f"REDISCLI_AUTH={stack.env['BBCU_REDIS_PASSWORD']}", redis,
                 "redis-cli", "GET", f"bbcu:job:{job_id}")
    node: str = json.loads(raw)["worker"]
    return node


def kill_worker_mid_job(stack: Stack, client: httpx.Client, hr: np.ndarray) -> None:
    params = {"task": "sr", "scale": "4", "tile": "32", "async": "true"}
    data = png(hr[64:192, 64:192])  # a few seconds of work: long enough to be caught running
    job_id = client.post("/restore", params=params, files={"image": ("in", data)}).json()["id"]
    job = wait_until(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] == "running" and j, 120,
                     None, "the job to run", 0.05)
    node = running_node(stack, job_id)
    hosts = {docker("inspect", "-f", "{{.Config.Hostname}}", c): c for c in stack.containers("worker-cpu")}
    victim = hosts[node.split("@", 1)[1]]
    # a worker that does not come back (its restart policy would bring it back under the same name;
    # tests/test_service_celery.py covers that case)
    docker("update", "--restart", "no", victim)
    docker("kill", victim)
    log(f"killed {victim[:12]} ({job['worker']}) at progress {job['progress']:.2f}")
    done = finished(client, job_id)
    check(done["status"] == "succeeded", f"the job did not survive the kill: {done}")
    rerun_on = running_node(stack, job_id)
    check(rerun_on != node and done["attempt"] == 2, f"not rerun on the other worker: {rerun_on}, {done}")
    log(f"job finished on {rerun_on} (attempt {done['attempt']})")
    result = client.get(f"/jobs/{job_id}/result")
    check(result.status_code == 200, f"result: {result.status_code}")
    compare("sr after the kill", result.content, done, params, data)


def no_root_and_redis_private(stack: Stack) -> None:
    for c in stack.containers():
        name = docker("inspect", "-f", "{{.Name}}", c).lstrip("/")
        uids = [row.split()[1] for row in docker("top", c, "-eo", "pid,uid").splitlines()[1:]]
        check(bool(uids) and "0" not in uids, f"{name} runs processes as root: uids {uids}")
        ports = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", c)) or {}
        published = {p: b for p, b in ports.items() if b}
        service = docker("inspect", "-f", '{{index .Config.Labels "com.docker.compose.service"}}', c)
        if service == "redis":
            check(not published, f"redis is published: {published}")
            anonymous = docker("exec", "-e", "REDISCLI_AUTH=", c, "redis-cli", "ping", check_rc=False)
            check("NOAUTH" in anonymous, f"redis answers a client without the password: {anonymous}")
        log(f"{name}: uids {sorted(set(uids))}, published {sorted(published) or 'nothing'}")


def all_healthy(stack: Stack) -> Callable[[], bool]:
    def probe() -> bool:
        states = {c: docker("inspect", "-f", "{{.State.Health.Status}}", c) for c in stack.containers()}
        return all(s == "healthy" for s in states.values())

    return probe


def api_has_no_torch() -> None:
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    done = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python", "bbcu-api:latest", "-c", code],
                          capture_output=True, text=True)
    check(done.returncode == 0, f"the API image has torch (or did not run): {done.stderr[-300:]}")


def image_sizes(images: list[str]) -> None:
    for image in images:
        size = int(docker("image", "inspect", "-f", "{{.Size}}", image))
        log(f"image {image}: {size / 1e6:.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-version", default=os.environ.get("TORCH_VERSION", "2.13.0"))
    parser.add_argument("--keep", action="store_true", help="leave the stack up (no down -v)")
    args = parser.parse_args()
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        log("no Docker daemon answers (make docker starts one)")
        return 2
    t0 = time.monotonic()
    with step("base images"):
        env = bases.resolve_all()
        log(" ".join(f"{k}={v}" for k, v in env.items()))
    env |= torch_wheelhouse(args.torch_version)
    port = free_port()
    env |= {"TORCH_VERSION": args.torch_version, "BUILD_NETWORK": "host", "BBCU_PORT": str(port),
            "BBCU_API_KEYS": "compose-test=sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest(),
            "BBCU_RATE_LIMIT_PER_MIN": "0",  # the checks poll a job faster than a client would
            "BBCU_REDIS_PASSWORD": secrets.token_hex(24)}
    stack = Stack(env)
    with step("build api and worker-cpu"):
        stack("build", "api", "worker-cpu")
    image_sizes(["bbcu-api:latest", "bbcu-worker-cpu:latest", env["PYTHON_IMAGE"], env["REDIS_IMAGE"]])
    hr = real_image()
    try:
        with step("api image without torch"):
            api_has_no_torch()
        with step("up"):
            stack("up", "-d")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            with step("/readyz"):
                wait_until(ready_workers(client, 1), 300, None, "/readyz", 1.0)
            with step("a request without the API key is refused"):
                anonymous = httpx.get(f"http://127.0.0.1:{port}/jobs/{'0' * 32}", timeout=30)
                check(anonymous.status_code == 401, f"without a key: {anonymous.status_code}")
            with step("restore each task through the published port, compare with the engine here"):
                restore_each_task(client, task_inputs(hr))
            with step("scale worker-cpu to 2"):
                stack("up", "-d", "--no-recreate", "--scale", "worker-cpu=2")
                wait_until(ready_workers(client, 2), 300, None, "2 live cpu workers", 1.0)
            with step("kill the worker running an async job"):
                kill_worker_mid_job(stack, client, hr)
        with step("health checks (API /readyz, worker heartbeats, redis ping)"):
            wait_until(all_healthy(stack), 180, None, "every container healthy", 5)
        with step("no container runs as root, redis not published and password-protected"):
            no_root_and_redis_private(stack)
    except BaseException:
        stack.logs()
        raise
    finally:
        if not args.keep:
            with step("down -v"):
                stack("down", "-v", "--remove-orphans")
    log(f"all checks passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
