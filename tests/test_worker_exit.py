"""`bbcu worker` reports a worker that Celery stopped on an unrecoverable error with a failing exit
status, so that a supervisor restarting on failure only (systemd's Restart=on-failure, Kubernetes'
OnFailure) starts it again. The soak campaign saw such stops: Redis full when a worker starts, and
kombu failing to reconnect after a Redis restart."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.conftest import REDIS_SERVER, free_port, service_env, spawn, start_worker, wait_until


def test_worker_stopped_by_an_unrecoverable_error_exits_1(tiny_weights: Path, logdir: Path) -> None:
    port = free_port()
    # maxmemory of one byte, no eviction: every write Celery makes at start-up is refused
    redis = spawn("redis-oom", [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--maxmemory", "1", "--maxmemory-policy",
                                "noeviction"], {}, logdir)

    def pong() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    worker = None
    try:
        wait_until(pong, 20, redis, "redis-server")
        env = service_env(tiny_weights, BBCU_BROKER_URL=f"redis://127.0.0.1:{port}/0")
        worker = start_worker("worker-oom", env, logdir, "--concurrency", "1")
        try:
            code = worker.popen.wait(120)
        except subprocess.TimeoutExpired:
            code = None
        log = worker.log.read_text(errors="replace")
        assert "Unrecoverable error" in log and "OutOfMemoryError" in log, worker.tail()
        assert "cannot join thread" not in log, worker.tail()  # the heartbeat never started: no join
        assert code == 1, worker.tail()
    finally:
        if worker is not None:
            worker.stop()
        redis.stop()
