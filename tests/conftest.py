"""Service test fixtures: tiny random weights, a private redis-server, real API and worker processes.

Everything here starts on demand: the session fixtures run only when a test asks for them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TINY_MODELS = ("tiny_denoise_l", "tiny_sr_x2_l", "tiny_sr_x4_l", "tiny_deblock_l")
# limits small enough to test cheaply, large enough for every test image
MAX_UPLOAD_BYTES = 1_000_000
MAX_PIXELS = 512 * 512
# every test service signs webhooks with this secret and may call back receivers on this machine
WEBHOOK_SECRET = "test-webhook-secret"
CORS_ORIGIN = "http://page.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A child process with its log file; stopped at teardown."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)


def spawn(name: str, argv: list[str], env: dict[str, str], logdir: Path) -> Proc:
    log = logdir / f"{name}.log"
    with log.open("wb") as f:
        base = {k: v for k, v in os.environ.items() if not k.startswith("BBCU_")}
        popen = subprocess.Popen(argv, cwd=ROOT, env={**base, **env}, stdout=f,
                                 stderr=subprocess.STDOUT)
    return Proc(name, popen, log)


def bbcu(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def wait_until(check, timeout: float, proc: Proc | None = None, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n"
                               f"{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError, OSError):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}\n{proc.tail() if proc else ''}")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights directory of tiny random-init networks for every task (sr x2 and x4)."""
    from models.config import deblock_config, denoise_config, sr_config
    from tests.factories import save_ours

    d = tmp_path_factory.mktemp("weights")
    save_ours(d, "tiny_denoise_l", denoise_config(nf=8, depth=4), seed=1)
    save_ours(d, "tiny_sr_x2_l", sr_config(2, "l", nf=8, depth=2), seed=2)
    save_ours(d, "tiny_sr_x4_l", sr_config(4, "l", nf=8, depth=2), seed=3)
    save_ours(d, "tiny_deblock_l", deblock_config(nf=8, depth=4), seed=4)
    return d


@pytest.fixture(scope="session")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_port(logdir: Path) -> Iterator[int]:
    """A private redis-server on a free port for the whole session."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (make test installs it)")
    port = free_port()
    proc = spawn("redis", [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--databases", "16"], {}, logdir)

    def pong() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    try:
        wait_until(pong, 20, proc, "redis-server")
        yield port
    finally:
        proc.stop()


def service_env(weights: Path, **extra: str) -> dict[str, str]:
    env = {"BBCU_WEIGHTS_DIR": str(weights), "BBCU_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
           "BBCU_MAX_PIXELS": str(MAX_PIXELS), "BBCU_TORCH_THREADS": "1", "BBCU_HEARTBEAT_S": "1",
           "BBCU_SYNC_WAIT_S": "60", "BBCU_EMBEDDED_WORKERS": "2", "PYTHONUNBUFFERED": "1",
           "BBCU_WEBHOOK_SECRET": WEBHOOK_SECRET, "BBCU_WEBHOOK_HOSTS": "127.0.0.1",
           "BBCU_WEBHOOK_BACKOFF_S": "0.2", "BBCU_CORS_ORIGINS": CORS_ORIGIN}
    return {**env, **extra}


@dataclass
class Service:
    """A running API (and, in Celery mode, its worker) reachable over HTTP."""

    mode: str
    url: str
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    redis_url: str | None = None

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60.0), **kw)  # type: ignore[arg-type]

    def logs(self) -> str:
        return "\n\n".join(f"--- {p.name}\n{p.tail()}" for p in self.procs)


def start_api(name: str, env: dict[str, str], logdir: Path) -> tuple[str, Proc]:
    port = free_port()
    proc = spawn(name, bbcu("serve", "--port", str(port), "--log-level", "warning"), env, logdir)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, 60, proc, f"{name} up")
    return url, proc


def start_worker(name: str, env: dict[str, str], logdir: Path, *extra: str) -> Proc:
    return spawn(name, bbcu("worker", "--queues", "cpu", "--hostname", f"{name}@%h", "--log-level",
                            "warning", *extra), env, logdir)


def wait_ready(url: str, proc: Proc, timeout: float = 60) -> None:
    wait_until(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, timeout, proc, "readiness")


@pytest.fixture(scope="session")
def celery_service(tiny_weights: Path, redis_port: int, logdir: Path) -> Iterator[Service]:
    """`bbcu serve` with BBCU_BROKER_URL and one `bbcu worker --queues cpu` (prefork, 2 processes)."""
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = service_env(tiny_weights, BBCU_BROKER_URL=redis_url)
    url, api = start_api("api-celery", env, logdir)
    worker = start_worker("worker-cpu", env, logdir, "--concurrency", "2")
    svc = Service("celery", url, env, [api, worker], redis_url)
    try:
        wait_ready(url, worker)
        yield svc
    finally:
        for p in reversed(svc.procs):
            p.stop()


@pytest.fixture(scope="session")
def embedded_service(tiny_weights: Path, logdir: Path) -> Iterator[Service]:
    """`bbcu serve` without a broker: the embedded pool and the in-memory store."""
    env = service_env(tiny_weights)
    url, api = start_api("api-embedded", env, logdir)
    svc = Service("embedded", url, env, [api])
    try:
        wait_ready(url, api)
        yield svc
    finally:
        api.stop()


@pytest.fixture(scope="session", params=["celery", "embedded"])
def service(request: pytest.FixtureRequest) -> Service:
    """Each end-to-end test runs against both modes."""
    return request.getfixturevalue(f"{request.param}_service")  # type: ignore[no-any-return]
