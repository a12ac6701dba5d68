"""Real processes for the tests and benchmarks: free ports, logged children, redis-server, `bbcu ...`.

The one home of the process harness: tests/conftest.py builds its fixtures on it, benchmarks/service.py
and benchmarks/load.py their clusters, docker/compose_test.py its polling.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)


def spawn(name: str, argv: list[str], env: dict[str, str], logdir: Path, *,
          new_session: bool = False) -> Proc:
    """Start ``argv`` in the repository with ``env`` over this environment less its BBCU_ settings (a
    child sees only the settings it is given), stdout and stderr to ``logdir/name.log``; ``new_session``:
    its own process group, for killing it with its children."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BBCU_")}
    log = logdir / f"{name}.log"
    with log.open("wb") as f:
        popen = subprocess.Popen(argv, cwd=ROOT, env={**base, **env}, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=new_session)
    return Proc(name, popen, log)


def wait_until(check: Callable[[], T], timeout: float, proc: Proc | None = None, what: str = "",
               every_s: float = 0.1) -> T:
    """Poll ``check`` (an HTTP or socket error counts as not yet) until it returns something truthy;
    that value. RuntimeError when ``proc`` exits first, TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n"
                               f"{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError, OSError):
            value = check()
            if value:
                return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{proc.tail() if proc else ''}")


def bbcu(*args: str) -> list[str]:
    """The command line of ``bbcu args`` with this interpreter."""
    return [sys.executable, "-m", "cli.main", *args]


def redis_pong(port: int) -> bool:
    """Whether a Redis on ``port`` answers PING."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def start_redis(name: str, logdir: Path, *args: str, port: int | None = None,
                new_session: bool = False) -> tuple[int, Proc]:
    """A private redis-server on 127.0.0.1 (a free port unless given; no snapshots unless ``args`` ask)
    answering PING; its port and process."""
    port = port or free_port()
    proc = spawn(name, [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *args], {},
                 logdir, new_session=new_session)
    try:
        wait_until(lambda: redis_pong(port), 30, proc, name)
    except BaseException:
        proc.stop()
        raise
    return port, proc


def healthy(url: str, path: str = "/healthz") -> Callable[[], bool]:
    """A check for ``wait_until``: ``url + path`` answers 200."""
    return lambda: httpx.get(url + path, timeout=2).status_code == 200
