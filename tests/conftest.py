"""Service test fixtures: tiny random weights, a private redis-server, real API and worker processes.

Everything here starts on demand: the session fixtures run only when a test asks for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from benchmarks.harness import REDIS_SERVER, Proc, bbcu, free_port, spawn, start_redis, wait_until
from tests.helpers import missing

TINY_MODELS = ("tiny_denoise_l", "tiny_sr_x2_l", "tiny_sr_x4_l", "tiny_deblock_l")
# limits small enough to test cheaply, large enough for every test image
MAX_UPLOAD_BYTES = 1_000_000
MAX_PIXELS = 512 * 512
# every test service signs webhooks with this secret and may call back receivers on this machine
WEBHOOK_SECRET = "test-webhook-secret"
CORS_ORIGIN = "http://page.example"


# a test using one of these starts processes or servers: it is a service test, outside `make test-quick`
SERVICE_FIXTURES = frozenset({"redis_port", "logdir", "celery_service", "embedded_service", "service",
                              "browser"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.service)


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
        missing("redis-server is not installed (make test installs it)")
    port, proc = start_redis("redis", logdir, "--appendonly", "no", "--databases", "16")
    try:
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
