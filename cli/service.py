"""``bbcu serve`` (the HTTP API) and ``bbcu worker`` (a Celery worker): thin shells over app/ and workers/."""

from __future__ import annotations

import argparse

from cli.common import fail
from workers.contract import QUEUES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP API",
                       description="Run the API. Without BBCU_BROKER_URL jobs run in an embedded pool in "
                                   "this process; with it they go to Celery workers.")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1,
                   help="API processes (Celery mode only; the embedded mode needs one process)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(handler=serve)

    w = sub.add_parser("worker", help="run a Celery worker",
                       description="Run a worker taking jobs from the given queues (needs BBCU_BROKER_URL).")
    w.add_argument("--queues", default="cpu", help="comma list of queues: cpu, gpu (default cpu)")
    w.add_argument("--concurrency", type=int, default=None,
                   help="worker processes or threads (default: CPU count for cpu, "
                        "BBCU_GPU_WORKER_THREADS for gpu)")
    w.add_argument("--pool", choices=("prefork", "solo", "threads"), default=None,
                   help="default prefork for cpu, threads for gpu (no CUDA before a fork)")
    w.add_argument("--hostname", default=None, help="Celery node name (default celery@<host>)")
    w.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    w.set_defaults(handler=worker)

    h = sub.add_parser("worker-alive", help="exit 0 if this host's worker has a live heartbeat",
                       description="A container health check: succeeds while a worker on this host "
                                   "beats in Redis (needs BBCU_BROKER_URL).")
    h.set_defaults(handler=worker_alive)

    k = sub.add_parser("key", help="make an API key", description="API keys (see BBCU_API_KEYS).")
    ksub = k.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    new = ksub.add_parser("new", help="print a fresh random key and the digest line the server needs",
                          description="Print a fresh random key (give it to the client) and its digest "
                                      "line (give it to the server: BBCU_API_KEYS or BBCU_API_KEYS_FILE). "
                                      "The server never holds the key itself.")
    new.add_argument("--name", default=None,
                     help="owner name of the key (letters, digits, . _ -): shown in logs and limits")
    new.set_defaults(handler=key_new)


def key_new(args: argparse.Namespace) -> int:
    from app.access import new_key, parse_entry

    key, entry = new_key()
    if args.name is not None:
        try:
            parse_entry(f"{args.name}={entry}", "--name")
        except ValueError as e:
            return fail(str(e))
    print(f"key (for the client, not kept anywhere): {key}")
    print(f"BBCU_API_KEYS entry: {args.name + '=' if args.name else ''}{entry}")
    print(f"BBCU_API_KEYS_FILE line: {entry}{' ' + args.name if args.name else ''}")
    return 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.server import raise_open_files_limit, uvicorn_options
    from workers.settings import get_settings

    settings = get_settings()
    if settings.embedded and args.workers != 1:
        return fail("the embedded mode runs one process; set BBCU_BROKER_URL to scale out")
    if args.workers > 1:
        _share_metrics()
    # the API processes inherit the raised limit; the connection budget is sized from it
    descriptors = raise_open_files_limit()
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, proxy_headers=True,
                **uvicorn_options(settings, descriptors))
    return 0


def _share_metrics() -> None:
    """Give the API processes one prometheus-client multiprocess directory, so that /metrics sums them.

    The directory comes from ``PROMETHEUS_MULTIPROC_DIR`` (emptied first: samples of an earlier run
    would be added in) or is a new temporary one; the processes inherit the variable.
    """
    import os
    import tempfile
    from pathlib import Path

    from app.metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
    else:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="bbcu-metrics-")


def pool_and_concurrency(gpu: bool, pool: str | None, concurrency: int | None,
                         gpu_threads: int) -> tuple[str, int]:
    """The Celery pool and its size for a worker (``None``: the default)."""
    import os

    if gpu:
        # a GPU worker runs several jobs in threads: while one job's tiles are on the GPU (its model
        # lock lets one batch run at a time), the others decode or encode on the CPU
        pool = pool or "threads"
        default = gpu_threads
    else:
        pool = pool or "prefork"
        default = os.cpu_count() or 1
    return pool, 1 if pool == "solo" else concurrency or default


def worker(args: argparse.Namespace) -> int:
    from workers.celery_app import run_worker
    from workers.settings import get_settings

    settings = get_settings()
    if not settings.broker_url:
        return fail("set BBCU_BROKER_URL (e.g. redis://localhost:6379/0)")
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if not queues or unknown:
        return fail(f"unknown queue(s) {unknown}; choose from {list(QUEUES)}")
    gpu = "gpu" in queues
    pool, concurrency = pool_and_concurrency(gpu, args.pool, args.concurrency,
                                             settings.gpu_worker_threads)
    if gpu and pool == "prefork":
        return fail("gpu workers run --pool solo or threads (CUDA must not be initialized "
                    "before a fork)")
    if gpu:
        import torch  # no fork follows: solo and thread pools run jobs in this process

        if not torch.cuda.is_available():
            return fail("queue gpu needs a CUDA device; none is available")
    return run_worker(settings, queues, pool=pool, concurrency=concurrency, log_level=args.log_level,
                      hostname=args.hostname, device="cuda" if gpu else "cpu")


def worker_alive(args: argparse.Namespace) -> int:
    import socket

    from workers.errors import StoreUnavailable
    from workers.redis_store import RedisStore
    from workers.settings import get_settings

    settings = get_settings()
    if not settings.broker_url:
        return fail("set BBCU_BROKER_URL (e.g. redis://localhost:6379/0)")
    store = RedisStore.from_settings(settings)
    host = socket.gethostname()
    try:
        mine = [w for q in QUEUES for w in store.registry.workers(q) if w.get("host") == host]
    except StoreUnavailable as e:
        return fail(f"Redis unreachable: {e}")
    if not mine:
        return fail(f"no live worker heartbeat from host {host}")
    print("alive:", ", ".join(sorted({str(w.get("worker")) for w in mine})))
    return 0
