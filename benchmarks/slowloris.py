"""Slowloris clients: connections that send a request head one line at a time and never finish it.

Shared by the slowloris test and the soak's ``slowloris`` scenario. A connection the server closes
(shed, or timed out) is opened again at once, as an attacker would, so the flood keeps its size. The
flood runs in a process of its own: in the measuring process it would hold the GIL in bursts and
delay the probes it is measured by.
"""

from __future__ import annotations

import errno
import multiprocessing
import resource
import selectors
import socket
import time
from multiprocessing.sharedctypes import Synchronized
from typing import Any

_CONNECTING, _OPEN = "connecting", "open"
REQUEST_LINE = b"GET /healthz HTTP/1.1\r\nHost: slow\r\n"
HEADER_LINE = b"X-Slow: 1\r\n"


class Dribblers:
    """``n`` dribbling connections to ``host:port``, one header line each per ``period_s``; counts
    what the server did to them. The process needs ``n`` open files and some (see ``files_needed``)."""

    def __init__(self, host: str, port: int, n: int, period_s: float = 0.5) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._opened: Synchronized[int] = ctx.Value("q", 0)  # connections that completed the handshake
        self._closed: Synchronized[int] = ctx.Value("q", 0)  # ...and the server closed, reset or answered
        self._process = ctx.Process(target=_dribble, name="slowloris", daemon=True,
                                    args=((host, port), n, period_s, self._stop, self._opened, self._closed))

    @staticmethod
    def files_needed(n: int) -> int:
        return n + 64

    @property
    def opened(self) -> int:
        return int(self._opened.value)

    @property
    def closed_by_server(self) -> int:
        return int(self._closed.value)

    def __enter__(self) -> Dribblers:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()


def _dribble(address: tuple[str, int], n: int, period_s: float, stop: Any, opened: Any, closed: Any) -> None:
    """The flood's loop (in its own process) until ``stop`` is set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, Dribblers.files_needed(n))), hard))
    sel = selectors.DefaultSelector()
    live: set[socket.socket] = set()

    def connect() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if s.connect_ex(address) not in (0, errno.EINPROGRESS):
            s.close()
            return
        sel.register(s, selectors.EVENT_WRITE, _CONNECTING)

    def drop(s: socket.socket) -> None:
        sel.unregister(s)
        live.discard(s)
        s.close()

    def lost(s: socket.socket) -> None:
        with closed.get_lock():
            closed.value += 1
        drop(s)
        connect()

    def send(s: socket.socket, data: bytes) -> None:
        try:
            s.send(data)
        except BlockingIOError:
            pass
        except OSError:
            lost(s)

    for _ in range(n):
        connect()
    next_round = time.monotonic() + period_s
    while not stop.is_set():
        for key, _ in sel.select(timeout=max(0.0, min(0.2, next_round - time.monotonic()))):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            if key.data == _CONNECTING:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    drop(s)  # refused or reset while connecting: try again
                    connect()
                    continue
                with opened.get_lock():
                    opened.value += 1
                live.add(s)
                sel.modify(s, selectors.EVENT_READ, _OPEN)
                send(s, REQUEST_LINE)
                continue
            try:
                s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                pass
            lost(s)  # readable: closed, reset or answered (a 4xx): this head is over
        if time.monotonic() >= next_round:
            next_round += period_s
            for s in list(live):
                send(s, HEADER_LINE)
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
