"""Slowloris clients: connections that send a request head one line at a time and never finish it.

Shared by the slowloris test and the soak's ``slowloris`` scenario. A connection the server closes
(shed, or timed out) is opened again at once, as an attacker would, so the flood keeps its size.
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time

_CONNECTING, _OPEN = "connecting", "open"
REQUEST_LINE = b"GET /healthz HTTP/1.1\r\nHost: slow\r\n"
HEADER_LINE = b"X-Slow: 1\r\n"


class Dribblers:
    """``n`` dribbling connections to ``host:port`` from a thread, one header line each per
    ``period_s``; counts what the server did to them."""

    def __init__(self, host: str, port: int, n: int, period_s: float = 0.5) -> None:
        self.address = (host, port)
        self.n, self.period_s = n, period_s
        self.opened = 0  # connections that completed their TCP handshake
        self.closed_by_server = 0  # ... that the server closed (or reset) before we did
        self.peak_open = 0
        self._open: set[socket.socket] = set()
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def __enter__(self) -> Dribblers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for key in list(self._selector.get_map().values()):
            self._close(key.fileobj)  # type: ignore[arg-type]
        self._selector.close()

    @property
    def open_now(self) -> int:
        return len(self._open)

    def _connect(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            return
        self._selector.register(s, selectors.EVENT_WRITE, _CONNECTING)

    def _close(self, s: socket.socket) -> None:
        self._selector.unregister(s)
        self._open.discard(s)
        s.close()

    def _lost(self, s: socket.socket) -> None:
        self.closed_by_server += 1
        self._close(s)
        self._connect()

    def _run(self) -> None:
        for _ in range(self.n):
            self._connect()
        next_round = time.monotonic() + self.period_s
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=max(0.0, next_round - time.monotonic())):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                if key.data == _CONNECTING:
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        self._close(s)  # refused or reset while connecting: try again
                        self._connect()
                        continue
                    self.opened += 1
                    self._open.add(s)
                    self.peak_open = max(self.peak_open, len(self._open))
                    self._selector.modify(s, selectors.EVENT_READ, _OPEN)
                    self._send(s, REQUEST_LINE)
                    continue
                try:
                    s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                self._lost(s)  # readable: closed, reset or answered (a 4xx): the head is over
            if time.monotonic() >= next_round:
                next_round += self.period_s
                for s in list(self._open):
                    self._send(s, HEADER_LINE)

    def _send(self, s: socket.socket, data: bytes) -> None:
        try:
            s.send(data)
        except BlockingIOError:
            pass
        except OSError:
            self._lost(s)
