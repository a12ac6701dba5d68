"""A small Prometheus text-format registry (counters and histograms) and the middleware feeding it."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
Labels = tuple[tuple[str, str], ...]

HELP = {
    "bbcu_http_requests_total": ("counter", "HTTP requests by method, route and status"),
    "bbcu_http_request_duration_seconds": ("histogram", "HTTP request latency by route"),
    "bbcu_jobs_submitted_total": ("counter", "Jobs enqueued by task and queue"),
    "bbcu_jobs_finished_total": ("counter", "Jobs seen finishing by synchronous requests, by status"),
    "bbcu_uploads_rejected_total": ("counter", "Uploads refused, by reason"),
}


def _num(value: float) -> str:
    v = float(value)
    return str(int(v)) if v.is_integer() else repr(v)


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"


class Metrics:
    """Thread-safe counters and histograms; one instance per app."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            h = self._hist[name].setdefault(key, [0.0] * (len(BUCKETS) + 2))
            for i, b in enumerate(BUCKETS):
                if value <= b:
                    h[i] += 1
            h[-2] += 1  # count
            h[-1] += value  # sum

    def render(self, gauges: Iterable[tuple[str, str, dict[str, Any], float]] = ()) -> str:
        """The exposition text; ``gauges`` are (name, help, labels, value) read at scrape time."""
        lines: list[str] = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                kind, text = HELP.get(name, ("counter", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                lines += [f"{name}{_fmt(k)} {_num(v)}" for k, v in sorted(series.items())]
            for name, hists in sorted(self._hist.items()):
                kind, text = HELP.get(name, ("histogram", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
                for k, h in sorted(hists.items()):
                    for i, b in enumerate(BUCKETS):
                        lines.append(f"{name}_bucket{_fmt(k + (('le', f'{b:g}'),))} {_num(h[i])}")
                    lines.append(f"{name}_bucket{_fmt(k + (('le', '+Inf'),))} {_num(h[-2])}")
                    lines.append(f"{name}_count{_fmt(k)} {_num(h[-2])}")
                    lines.append(f"{name}_sum{_fmt(k)} {h[-1]:.6f}")
        seen: set[str] = set()
        for name, text, labels, value in gauges:
            if name not in seen:
                lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
                seen.add(name)
            lines.append(f"{name}{_fmt(tuple(sorted((k, str(v)) for k, v in labels.items())))} {_num(value)}")
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts every HTTP request by its route template (not the raw path, so ids do not explode)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.inc("bbcu_http_requests_total", method=scope["method"], route=path,
                             status=str(status[0]))
            self.metrics.observe("bbcu_http_request_duration_seconds", time.perf_counter() - start,
                                 route=path)
