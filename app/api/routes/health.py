"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from app.api.deps import DispatcherDep, MetricsDep, SettingsDep, StoreDep
from models import catalog
from workers.contract import QUEUES
from workers.errors import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready (see the body)"}})
def readyz(settings: SettingsDep, store: StoreDep, dispatcher: DispatcherDep) -> JSONResponse:
    """Readiness: the broker answers and every required queue has a live worker (or the embedded pool)."""
    body: dict[str, Any] = {"mode": dispatcher.mode, "required_queues": settings.required_queue_list}
    try:
        store.ping()
        workers = dispatcher.workers()
    except StoreUnavailable as e:
        body.update(ready=False, broker="unreachable", detail=str(e))
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(settings.retry_after_s)})
    body["broker"] = "ok"
    body["workers"] = {q: len(w) for q, w in workers.items()}
    body["models"] = len(catalog.entries(settings.weights_dir))
    missing = [q for q in settings.required_queue_list if not workers.get(q)]
    problems = [f"no live worker for queue(s): {', '.join(missing)}"] if missing else []
    if not body["models"]:
        problems.append(f"no model files in {settings.weights_dir.name}/ (BBCU_WEIGHTS_DIR)")
    body["ready"] = not problems
    if problems:
        body["detail"] = "; ".join(problems)
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(settings.retry_after_s)})
    return JSONResponse(body)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(metrics: MetricsDep, store: StoreDep, dispatcher: DispatcherDep) -> PlainTextResponse:
    """Prometheus text format: requests, latency, jobs, queue depth, live workers, broker up."""
    gauges: list[tuple[str, str, dict[str, Any], float]] = []
    try:
        store.ping()
        workers = dispatcher.workers()
        lengths = dispatcher.queue_lengths()
        gauges.append(("bbcu_broker_up", "1 when the broker answers", {}, 1))
        for q in QUEUES:
            gauges.append(("bbcu_workers", "Live workers by queue", {"queue": q}, len(workers.get(q, []))))
        for q in QUEUES:
            gauges.append(("bbcu_queue_length", "Jobs waiting by queue", {"queue": q}, lengths.get(q, 0)))
        seen: dict[str, dict[str, Any]] = {w.get("worker", "?"): w for ws in workers.values() for w in ws}
        for name, w in sorted(seen.items()):
            if "rss_bytes" in w:
                gauges.append(("bbcu_worker_rss_bytes", "Resident memory of a worker and its pool",
                               {"worker": name}, w["rss_bytes"]))
            for kind in ("allocated", "reserved"):
                if f"gpu_{kind}_bytes" in w:
                    gauges.append(("bbcu_worker_gpu_memory_bytes", "CUDA memory of a GPU worker",
                                   {"worker": name, "kind": kind}, w[f"gpu_{kind}_bytes"]))
    except StoreUnavailable:
        gauges.append(("bbcu_broker_up", "1 when the broker answers", {}, 0))
    return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")
