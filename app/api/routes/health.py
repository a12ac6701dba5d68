"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

from app.api.deps import DispatcherDep, MetricsDep, SettingsDep, StoreDep, get_operator
from app.api.examples import OPERATOR_RESPONSES, READY_RESPONSES
from app.api.openapi import OPERATOR_ONLY
from app.api.schemas import Readiness
from app.errors import Problem
from models import catalog
from workers.contract import QUEUES
from workers.dispatch import Dispatcher
from workers.errors import StoreUnavailable
from workers.redis_store import RedisStore
from workers.settings import Settings
from workers.store import JobStore

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses=READY_RESPONSES)
def readyz(settings: SettingsDep, store: StoreDep, dispatcher: DispatcherDep) -> JSONResponse:
    """Readiness: the broker answers and every required queue has a live worker (or the embedded pool)."""
    body: dict[str, Any] = {"mode": dispatcher.mode, "required_queues": settings.required_queue_list}
    try:
        store.ping()
        workers = dispatcher.workers()
    except StoreUnavailable as e:
        body.update(ready=False, broker="unreachable")
        return not_ready(str(e), body, settings.retry_after_s)  # names no host: see RedisStore.guard
    body["broker"] = "ok"
    # a worker beats from the moment Celery is up; it is ready once a process of it has preloaded
    ready = {q: [w for w in ws if w.get("ready") is not False] for q, ws in workers.items()}
    body["workers"] = {q: len(w) for q, w in ready.items()}
    starting = {q: len(ws) - len(ready[q]) for q, ws in workers.items() if len(ws) > len(ready[q])}
    if starting:
        body["starting"] = starting
    body["models"] = len(catalog.entries(settings.weights_dir))
    missing = [q for q in settings.required_queue_list if not ready.get(q)]
    problems = []
    if missing:
        still = [q for q in missing if starting.get(q)]
        problems.append(f"no live worker for queue(s): {', '.join(missing)}"
                        + (f" ({', '.join(still)}: still preloading)" if still else ""))
    if not body["models"]:
        problems.append(f"no model files in {settings.weights_dir.name}/ (BBCU_WEIGHTS_DIR)")
    body["ready"] = not problems
    if problems:
        return not_ready("; ".join(problems), body, settings.retry_after_s)
    return JSONResponse(body)


def not_ready(detail: str, body: dict[str, Any], retry_after_s: int) -> JSONResponse:
    """503 as a problem that carries the readiness members (ready, broker, workers...)."""
    return Problem(503, "Not ready", detail, slug="not-ready", headers={"Retry-After": str(retry_after_s)},
                   **body).response()


# every tenant's traffic, worker names and memory are for the operator: BBCU_METRICS_KEY, never a tenant's key
@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(get_operator)],
            responses=OPERATOR_RESPONSES, openapi_extra=OPERATOR_ONLY)
def metrics(metrics: MetricsDep, settings: SettingsDep, store: StoreDep,
            dispatcher: DispatcherDep) -> PlainTextResponse:
    """Prometheus text format: requests, latency, jobs, queue depth and admission limits, live workers,
    broker up."""
    return PlainTextResponse(metrics.render(lambda: _live_gauges(settings, store, dispatcher)),
                             media_type=CONTENT_TYPE_PLAIN_0_0_4)


def _live_gauges(settings: Settings, store: JobStore, dispatcher: Dispatcher) -> list[Metric]:
    """The shared state as gauges, read from the broker at scrape time (the same in every process)."""
    up = GaugeMetricFamily("bbcu_broker_up", "1 when the broker answers")
    try:
        store.ping()
        workers = dispatcher.workers()
        lengths = dispatcher.queue_lengths()
        jobs, size = store.queued()
        results = store.result_bytes()
        redis_budget = None
        if isinstance(store, RedisStore):  # the settings' limits, lowered to what Redis's maxmemory holds
            redis_budget = (store.memory.budget(), store.record_bytes())
    except StoreUnavailable:
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    admission = [
        GaugeMetricFamily("bbcu_queued_jobs", "Jobs holding a stored input (queued or running)", value=jobs),
        GaugeMetricFamily("bbcu_queued_bytes", "Bytes of the inputs those jobs hold", value=size),
        GaugeMetricFamily("bbcu_result_bytes", "Bytes of the results held", value=results)]
    if redis_budget is not None:  # the embedded pool's own limit is embedded_queue
        budget, records = redis_budget
        admission += [
            GaugeMetricFamily("bbcu_queued_jobs_limit", "Queued or running jobs before 503 (max_queued_jobs)",
                              value=settings.max_queued_jobs),
            GaugeMetricFamily("bbcu_queued_bytes_limit", "Input bytes before 503 (max_queued_bytes, or "
                              "less for Redis's maxmemory)", value=budget.queued_bytes),
            GaugeMetricFamily("bbcu_stored_bytes_limit",
                              "Input, result and record bytes before 503 (max_stored_bytes, or less for "
                              "Redis's maxmemory)", value=budget.stored_bytes),
            GaugeMetricFamily("bbcu_record_bytes", "Bytes counted for the job records kept",
                              value=records)]
    live = GaugeMetricFamily("bbcu_workers", "Live workers by queue", labels=["queue"])
    waiting = GaugeMetricFamily("bbcu_queue_length", "Jobs waiting by queue", labels=["queue"])
    for q in QUEUES:
        live.add_metric([q], len(workers.get(q, [])))
        waiting.add_metric([q], lengths.get(q, 0))
    rss = GaugeMetricFamily("bbcu_worker_rss_bytes", "Resident memory of a worker and its pool",
                            labels=["worker"])
    gpu = GaugeMetricFamily("bbcu_worker_gpu_memory_bytes", "CUDA memory of a GPU worker",
                            labels=["kind", "worker"])
    seen: dict[str, dict[str, Any]] = {w.get("worker", "?"): w for ws in workers.values() for w in ws}
    for name, w in sorted(seen.items()):
        if "rss_bytes" in w:
            rss.add_metric([name], w["rss_bytes"])
        for kind in ("allocated", "reserved"):
            if f"gpu_{kind}_bytes" in w:
                gpu.add_metric([kind, name], w[f"gpu_{kind}_bytes"])
    return [up, live, waiting, *admission, rss, gpu]
