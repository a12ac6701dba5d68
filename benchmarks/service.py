"""Service overhead: a synchronous 256x256 denoise through API + Celery + Redis vs the engine alone.

One run, the same image and the same weights (the shipped denoise network, or a random-init
network of the paper's size when none is shipped yet). The service path is timed at the client
(upload, validation, Redis, Celery, worker decode/inference/encode, download); the engine path is
the same decode + inference + encode in this process, with the same number of torch threads as the
worker. Runs are interleaved so both see the same machine load. The embedded mode is timed too.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from benchmarks.harness import Proc, bbcu, free_port, healthy, spawn, start_redis, wait_until

THREADS = 2
SIZE = 256
TARGET_RATIO, TARGET_MS = 1.15, 50.0


@contextmanager
def _processes(env: dict[str, str], broker: bool, logdir: Path) -> Iterator[str]:
    """redis-server, `bbcu serve` and (with a broker) `bbcu worker`, stopped on exit."""
    procs: list[Proc] = []
    extra: dict[str, str] = {}
    try:
        if broker:
            if shutil.which("redis-server") is None:
                raise RuntimeError("redis-server not found (make redis installs it)")
            rport, redis = start_redis("redis", logdir)
            procs.append(redis)
            extra["BBCU_BROKER_URL"] = f"redis://127.0.0.1:{rport}/0"
            worker = bbcu("worker", "--queues", "cpu", "--concurrency", "1", "--log-level", "warning")
            procs.append(spawn("worker", worker, {**env, **extra}, logdir))
        port = free_port()
        api = spawn("api", bbcu("serve", "--port", str(port), "--log-level", "warning"), {**env, **extra},
                    logdir)
        procs.append(api)
        url = f"http://127.0.0.1:{port}"
        wait_until(healthy(url, "/readyz"), 120, api, "the service")
        yield url
    finally:
        for p in reversed(procs):
            p.stop(15)


def _weights(tmp: Path) -> tuple[Path, str]:
    from models import catalog

    try:
        entry = catalog.find("denoise")
        return entry.path.parent, f"shipped `{entry.name}`"
    except Exception:  # noqa: BLE001 - any catalogue problem: fall back to a paper-size network
        pass
    import torch

    from models import archs, checkpoints
    from models.config import denoise_config

    torch.manual_seed(0)
    config = denoise_config()
    checkpoints.save(tmp / "bench_denoise.safetensors", archs.build(config).eval(), config,
                     {"provenance": "random init for the service benchmark"})
    return tmp, "random-init DnCNN-20 nf=64 (no shipped denoise weights yet)"


def _image() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    clean = np.stack([0.5 + 0.4 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in (0.0, 1.0, 2.0)], -1)
    noisy = np.clip(clean + rng.normal(0, 25 / 255, clean.shape), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((noisy * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def _measure(url: str, data: bytes, engine: Callable[[], object], n: int) -> tuple[list[float], list[float],
                                                                                     dict[str, float]]:
    service, alone, timing = [], [], {}
    with httpx.Client(base_url=url, timeout=120) as c:

        def call() -> httpx.Response:
            r = c.post("/restore", params={"task": "denoise", "format": "png"},
                       files={"image": ("bench.png", data, "image/png")})
            r.raise_for_status()
            return r

        for _ in range(3):
            call()
            engine()
        parts: dict[str, list[float]] = {}
        for _ in range(n):
            t0 = time.perf_counter()
            r = call()
            service.append(time.perf_counter() - t0)
            for item in r.headers.get("server-timing", "").split(","):
                name, _, dur = item.strip().partition(";dur=")
                if dur:
                    parts.setdefault(name, []).append(float(dur))
            t0 = time.perf_counter()
            engine()
            alone.append(time.perf_counter() - t0)
        timing = {k: float(np.median(v)) for k, v in parts.items()}
    return service, alone, timing


def run(n: int | None = None) -> str:
    import torch

    from models import imageio, pipeline
    from models.engine import load_for_task

    n = n or int(os.environ.get("BBCU_BENCH_N", "40"))
    torch.set_num_threads(THREADS)
    data = _image()
    rows = ["| path | p50 (ms) | p95 (ms) | overhead p50 / p95 (ms) | target p50 / p95 (ms) | within |",
            "|---|---|---|---|---|---|"]
    notes = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights_dir, weights_label = _weights(tmp)
        model = load_for_task("denoise", weights_dir=weights_dir)

        def engine() -> bytes:
            restored = pipeline.restore_image(model, imageio.decode(data, max_pixels=1 << 30))
            return imageio.encode(restored, "png")

        env = {"BBCU_WEIGHTS_DIR": str(weights_dir), "BBCU_TORCH_THREADS": str(THREADS),
               "BBCU_HEARTBEAT_S": "2"}
        engine_rows = []
        for label, broker in (("API + Celery + Redis", True), ("API, embedded pool", False)):
            with _processes(env, broker, tmp) as url:
                service, alone, timing = _measure(url, data, engine, n)
            e50, e95 = _pct(alone, 50), _pct(alone, 95)
            s50, s95 = _pct(service, 50), _pct(service, 95)
            t50, t95 = e50 * TARGET_RATIO + TARGET_MS, e95 * TARGET_RATIO + TARGET_MS
            ok = "yes" if s50 <= t50 and s95 <= t95 else "**no**"
            engine_rows.append(f"| engine alone (during the {label} run) | {e50:.1f} | {e95:.1f} | | | |")
            rows.append(f"| {label} | {s50:.1f} | {s95:.1f} | {s50 - e50:+.1f} / {s95 - e95:+.1f} "
                        f"| {t50:.1f} / {t95:.1f} | {ok} |")
            notes.append(f"{label}: worker Server-Timing medians (ms): "
                         + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
    rows[2:2] = engine_rows
    backend = model.info.backend
    head = (f"Synchronous {SIZE}x{SIZE} PNG denoise, {n} interleaved requests per path, {THREADS} torch "
            f"threads in the worker and the engine, backend `{backend}`, weights: {weights_label}. "
            f"Engine alone = decode + inference + encode in one process. Target: service <= "
            f"engine x {TARGET_RATIO} + {TARGET_MS:.0f} ms.\n")
    return head + "\n" + "\n".join(rows) + "\n\n" + "\n".join(f"- {s}" for s in notes)


if __name__ == "__main__":
    print(run())
