"""`bbcu worker` rides out what stops Celery on an unrecoverable error (issue 20, item 3): Redis full
as a worker starts, or kombu failing to reconnect after a Redis restart (both seen by the soak
campaign). The worker starts again in its own process, with a growing delay, instead of exiting and
leaving its queue to a supervisor; a stop asked for by a signal still ends it, with status 0."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from benchmarks.harness import start_redis, wait_until
from tests.conftest import service_env, start_worker


def test_worker_stopped_by_an_unrecoverable_error_starts_again_in_process(tiny_weights: Path,
                                                                          logdir: Path) -> None:
    # maxmemory of one byte, no eviction: every write Celery makes at start-up is refused
    port, server = start_redis("redis-oom", logdir, "--appendonly", "no", "--maxmemory", "1",
                               "--maxmemory-policy", "noeviction")
    worker = None
    try:
        env = service_env(tiny_weights, BBCU_BROKER_URL=f"redis://127.0.0.1:{port}/0")
        worker = start_worker("worker-oom", env, logdir, "--concurrency", "1")
        w = worker

        def restarts() -> int:
            return w.log.read_text(errors="replace").count("it starts again in this process")

        wait_until(lambda: restarts() >= 2, 120, worker, "two in-process restarts")
        log = worker.log.read_text(errors="replace")
        assert "Unrecoverable error" in log and "OutOfMemoryError" in log, worker.tail()
        assert worker.popen.poll() is None  # still running, not waiting for a supervisor
        # Redis gets room: the same process comes up and announces itself ready
        r = redis.Redis(port=port)
        r.config_set("maxmemory", "0")
        wait_until(lambda: any(b'"ready": true' in (r.get(k) or b"") for k in r.keys("bbcu:worker:cpu:*")),
                   120, worker, "the restarted worker's heartbeat")
        assert "cannot join thread" not in worker.log.read_text(errors="replace"), worker.tail()
        assert worker.popen.poll() is None
        worker.popen.terminate()  # a warm shutdown asked for: no restart, status 0
        assert worker.popen.wait(60) == 0, worker.tail()
    except subprocess.TimeoutExpired:
        raise AssertionError(worker.tail() if worker else "") from None
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
