"""Connection floods (issue 20, item 2): an API held to 1024 open files keeps answering /healthz while
thousands of connections dribble their request heads, and `bbcu serve` raises its own soft limit."""

from __future__ import annotations

import os
import resource
import shutil
import time
from pathlib import Path

import httpx
import pytest

from app.server import ConnectionBudget, raise_open_files_limit
from benchmarks.harness import Proc, bbcu, free_port, spawn, wait_until
from benchmarks.slowloris import Dribblers
from tests.conftest import service_env
from workers.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is missing")

FLOOD = 2500  # dribbling connections, more than twice what the API's 1024 descriptors can hold
LIMIT = 1024


def start_limited(name: str, weights: Path, logdir: Path, soft: int, hard: int) -> tuple[str, Proc]:
    """`bbcu serve` (embedded mode) started under the given open-file limits; prlimit execs it, so
    the process id is the server's."""
    port = free_port()
    # a head dribbled for a minute is not timed out: only shedding closes the flood's connections
    env = service_env(weights, BBCU_HTTP_HEADER_TIMEOUT_S="60")
    proc = spawn(name, ["prlimit", f"--nofile={soft}:{hard}", "--",
                        *bbcu("serve", "--port", str(port), "--log-level", "warning")], env, logdir)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, 60, proc, f"{name} up")
    return url, proc


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_dribbling_flood_leaves_healthz_answering(tiny_weights: Path, logdir: Path) -> None:
    if raise_open_files_limit() < Dribblers.files_needed(FLOOD):
        pytest.skip(f"this test needs {FLOOD + 256} open files for its own connections")
    url, api = start_limited("api-slowloris", tiny_weights, logdir, LIMIT, LIMIT)
    pid = api.popen.pid
    budget = ConnectionBudget.for_descriptors(Settings(), LIMIT)
    try:
        with Dribblers("127.0.0.1", int(url.rsplit(":", 1)[1]), FLOOD) as flood:
            wait_until(lambda: flood.opened >= LIMIT, 60, api, "the flood to pass 1024 connections")
            statuses, most_files = [], 0
            for _ in range(12):
                # a new connection each time, as a health checker makes. With no room to raise the
                # limit, a flood that reconnects at once keeps the listen queue full: a probe's SYN may
                # be dropped and retried (1 s, 2 s ...), so answers are bounded here, not timed
                statuses.append(httpx.get(url + "/healthz", timeout=20).status_code)
                most_files = max(most_files, open_files(pid))
                time.sleep(0.25)
            opened, shed = flood.opened, flood.closed_by_server
        assert statuses == [200] * 12
        # the server held fewer than its limit and shed the oldest half-open connections to stay there
        assert most_files < LIMIT
        assert opened > LIMIT and shed >= FLOOD - budget.limit_concurrency
        assert api.popen.poll() is None
        log = api.log.read_text(errors="replace")
        assert "Too many open files" not in log and "Exceeded concurrency limit" not in log
    finally:
        api.stop()


def test_serve_raises_its_soft_limit_to_the_hard_one(tiny_weights: Path, logdir: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip("the hard limit of open files here is below 4096")
    _, api = start_limited("api-nofile", tiny_weights, logdir, LIMIT, 4096)
    try:
        limits = Path(f"/proc/{api.popen.pid}/limits").read_text().splitlines()
        soft_now, hard_now = next(line for line in limits if line.startswith("Max open files")).split()[3:5]
        assert (soft_now, hard_now) == ("4096", "4096")
    finally:
        api.stop()


def test_connection_budget_follows_the_descriptors() -> None:
    """Few descriptors: the connections, one accept burst and Redis' pool fit in them; many: the
    configured or derived limit, with shedding below it."""
    settings = Settings()
    small = ConnectionBudget.for_descriptors(settings, LIMIT)
    assert small.limit_concurrency + 2 * small.backlog + settings.redis_max_connections < LIMIT
    assert small.shed_to < small.shed_at < small.limit_concurrency
    large = ConnectionBudget.for_descriptors(settings, 1 << 20)
    assert (large.limit_concurrency, large.backlog) == (4096, settings.http_backlog)
    fixed = ConnectionBudget.for_descriptors(Settings(http_limit_concurrency=500), 1 << 20)
    assert fixed.limit_concurrency == 500
