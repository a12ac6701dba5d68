"""``make soak``: a load and fault campaign against the real service, counting what became of every request.

It starts its own redis-server (append-only file on, a private port and directory), ``bbcu serve`` in
Celery mode (two API processes for the shared scenarios of the full campaign, so the recovery sweeper
must act once across them) and ``bbcu worker`` processes with a tiny random denoise network (small
images: jobs take milliseconds, so the campaign measures the service, not the network), and runs these
scenarios:

- ``sync``: synchronous ``POST /restore`` at high concurrency, one worker running;
- ``async``: asynchronous submissions while no worker runs, then one worker starts;
- ``kill``: a worker (its whole process group) is SIGKILLed while it runs jobs; another starts under the
  same name, as a restarted container would;
- ``redis-restart``: redis-server is stopped and started again (same append-only file) while jobs are
  submitted and run;
- ``evict``: a fresh Redis with a small ``maxmemory`` and the eviction policy of the shipped
  docker-compose.yml, sent more input bytes than fit while no worker runs; then one starts. The API's
  admission limit on queued input bytes (where the settings have one) is half of maxmemory, as in
  docker-compose.yml;
- ``redis-full``: the same with the admission limit above maxmemory: Redis itself fills;
- ``keys``: API keys on (default rate limit and job quota): one key floods asynchronous submissions
  while another sends synchronous requests one at a time;
- ``redis-sized``: issue 20's operator Redis, smaller than the settings assume (``--maxmemory`` 100 MiB,
  ``--maxmemory-policy volatile-ttl``, no ``BBCU_MAX_*`` settings): 200 asynchronous 512x512 uploads
  with no worker, then one; the API must admit only what that Redis holds;
- ``slowloris``: 3000 connections dribbling request heads at an API started at a soft limit of 1024
  open files, while synchronous requests are served.

Workers that exit on their own are started again (as compose's ``restart: unless-stopped`` does) and
counted. Accepted jobs get ``unattended_s`` to end with no client reading them (the API can recover a
dead worker's job when it is read; a job nobody asks about must end too), then are followed through
the API until ``settle_s``.

A probe thread GETs ``/healthz`` every 0.2 s throughout. Each scenario prints one row: requests
accepted (a job was created: 200, 202, or a problem naming the job), refused (429/503 without a job,
by status; each must carry Retry-After), succeeded, failed (by error code), lost (accepted but its
input lost, not terminal by the deadline, unknown (404), or its result gone), stranded until read,
other 5xx, transport errors and the slowest ``/healthz``. Targets (issue 11): nothing lost or stranded,
every refusal with Retry-After, no other 5xx, no transport error, ``/healthz`` within 1 s. The exit
status is 1 if any scenario misses one.
The table is written to .bench/soak.md as well.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np

from benchmarks.harness import (
    REDIS_SERVER,
    ROOT,
    Proc,
    bbcu,
    free_port,
    healthy,
    redis_pong,
    spawn,
    wait_until,
)

SCENARIOS = ("sync", "async", "kill", "redis-restart", "evict", "redis-full", "keys", "redis-sized",
             "slowloris")
MEMORY = ("evict", "redis-full")
KEYS = ("flood", "calm")  # the API keys of the keys scenario
HEALTHZ_TARGET_S = 1.0
PROBE_PERIOD_S = 0.2
PROBE_TIMEOUT_S = 5.0
TERMINAL = ("succeeded", "failed", "cancelled")
REFUSALS = (429, 503)


@dataclass(frozen=True)
class Scale:
    """How hard each scenario pushes (requests, concurrency, image side in pixels)."""

    sync_n: int
    sync_concurrency: int
    async_n: int
    kill_n: int
    restart_n: int
    evict_n: int
    evict_maxmemory_mb: int
    settle_s: float  # how long accepted jobs have to reach a terminal state after the last fault
    unattended_s: float  # how long they have to do so with no client reading them
    keys_n: int  # submissions of the flooding API key
    api_processes: int  # `bbcu serve --workers N`: the recovery sweeper must act once across them
    sized_n: int  # redis-sized: uploads, their side, and Redis's maxmemory
    sized_side: int
    sized_maxmemory_mb: int
    slowloris_n: int  # dribbling connections
    slowloris_requests: int  # synchronous requests served meanwhile


# the campaign of issue 11, and a scaled-down one that fits in CI time
FULL = Scale(sync_n=400, sync_concurrency=150, async_n=1000, kill_n=300, restart_n=300, evict_n=400,
             evict_maxmemory_mb=64, settle_s=180, unattended_s=60, keys_n=600, api_processes=2,
             sized_n=200, sized_side=512, sized_maxmemory_mb=100, slowloris_n=3000, slowloris_requests=100)
QUICK = Scale(sync_n=40, sync_concurrency=20, async_n=100, kill_n=60, restart_n=60, evict_n=200,
              evict_maxmemory_mb=32, settle_s=90, unattended_s=45, keys_n=120, api_processes=1,
              sized_n=60, sized_side=256, sized_maxmemory_mb=16, slowloris_n=1500, slowloris_requests=30)
SLOWLORIS_SOFT_LIMIT = 1024  # the common default soft limit of open files
SIDES = {"sync": 64, "async": 64, "kill": 160, "redis-restart": 96, "evict": 256}
SUBMIT_CONCURRENCY = 16
WORKER_READY_S = 120.0
LOGDIR = Path(".bench/soak-logs")


# ---------------------------------------------------------------------------------------------------
# processes


def compose_eviction_policy() -> str:
    """The ``--maxmemory-policy`` of the shipped docker-compose.yml (Redis's default if it sets none)."""
    text = (ROOT / "docker-compose.yml").read_text()
    found = re.search(r'"--maxmemory-policy",\s*"([a-z-]+)"', text)
    return found.group(1) if found else "noeviction"


class Cluster:
    """redis-server, one API and any number of workers, each in its own process group.

    ``close`` stops everything (SIGTERM, then SIGKILL to the group); the temporary directory goes too.
    """

    def __init__(self, workdir: Path, logdir: Path, weights: Path, *, maxmemory_mb: int = 0,
                 policy: str = "noeviction", env: dict[str, str] | None = None,
                 api_processes: int = 1, api_soft_files: int = 0) -> None:
        self.dir = workdir
        self.api_processes = api_processes
        # the API started at this soft limit of open files (prlimit; the hard limit left as it is)
        self.api_prefix = ["prlimit", f"--nofile={api_soft_files}:", "--"] if api_soft_files else []
        self.logdir = logdir
        self.redis_port = free_port()
        self.redis_args = [REDIS_SERVER, "--port", str(self.redis_port),
                           "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
                           "--appendonly", "yes", "--appendfsync", "everysec"]
        if maxmemory_mb:
            self.redis_args += ["--maxmemory", f"{maxmemory_mb}mb", "--maxmemory-policy", policy]
        self.env = {"BBCU_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                    "BBCU_WEIGHTS_DIR": str(weights),
                    "BBCU_TORCH_THREADS": "1", "BBCU_HEARTBEAT_S": "1", "BBCU_SYNC_WAIT_S": "60",
                    "BBCU_REDIS_TIMEOUT_S": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.redis: Proc | None = None
        self.api: Proc | None = None
        self.url = ""
        self.workers: list[Proc] = []
        self.keys: dict[str, str] = {}  # API key by name, where the API requires keys
        self._spawned: list[Proc] = []
        self._count: Counter[str] = Counter()
        self.worker_exits = 0  # workers that exited unasked (and were started again)
        self._lock = threading.Lock()  # self.workers, between the scenario and the supervisor
        self._closing = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="soak-supervisor", daemon=True)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None) -> Proc:
        self._count[name] += 1
        proc = spawn(f"{name}-{self._count[name]}", argv, env or {}, self.logdir, new_session=True)
        self._spawned.append(proc)
        return proc

    def start_redis(self) -> None:
        self.redis = self._spawn("redis", self.redis_args, None)
        wait_until(lambda: redis_pong(self.redis_port), 30, self.redis, "redis-server")

    def stop_redis(self) -> None:
        """A clean shutdown (SIGTERM): Redis writes its append-only file and exits."""
        assert self.redis is not None
        self.redis.popen.terminate()
        self.redis.popen.wait(30)

    def start_api(self) -> None:
        port = free_port()
        self.api = self._spawn("api", [*self.api_prefix, *bbcu("serve", "--port", str(port), "--workers",
                                                         str(self.api_processes), "--log-level", "warning")],
                               self.env)
        self.url = f"http://127.0.0.1:{port}"
        wait_until(healthy(self.url), 120, self.api, "the API")

    def _spawn_worker(self) -> Proc:
        # one node name for every worker, as a restarted container keeps its host name
        return self._spawn("worker", bbcu("worker", "--queues", "cpu", "--concurrency", "2", "--hostname",
                                          "soak@%h", "--log-level", "warning"), self.env)

    def start_worker(self, tally: Tally) -> Proc:
        """Start a worker and wait for /readyz; one that never gets ready is noted, not fatal (the
        supervisor starts it again if it exits; its jobs then count as stranded)."""
        with self._lock:
            worker = self._spawn_worker()
            self.workers.append(worker)
        try:
            wait_until(healthy(self.url, "/readyz"), WORKER_READY_S, None, "a ready worker")
        except TimeoutError:
            tally.notes.append(f"no worker ready {WORKER_READY_S:.0f} s after one was started "
                               f"(see {self.logdir}/worker-*.log)")
        return worker

    def stop_workers(self) -> None:
        """A warm shutdown: each worker finishes what it runs, then exits."""
        with self._lock:
            stopping, self.workers = self.workers, []
        for w in stopping:
            _stop(w, 60)

    def kill_worker(self, worker: Proc) -> None:
        """SIGKILL to the worker's whole process group, as when its container is killed."""
        with self._lock:
            os.killpg(worker.popen.pid, signal.SIGKILL)
            worker.popen.wait(10)
            self.workers.remove(worker)

    def supervise(self) -> None:
        self._supervisor.start()

    def _supervise(self) -> None:
        """As compose's ``restart: unless-stopped`` does: a worker that exits unasked is started again."""
        while not self._closing.wait(0.5):
            with self._lock:
                for i, w in enumerate(self.workers):
                    if w.popen.poll() is not None:
                        self.workers[i] = self._spawn_worker()
                        self.worker_exits += 1

    def close(self) -> None:
        self._closing.set()
        if self._supervisor.is_alive():
            self._supervisor.join()
        for proc in reversed(self._spawned):
            _stop(proc, 20)


def _stop(proc: Proc, timeout: float) -> None:
    """SIGTERM to the process group, SIGKILL after ``timeout``; then to any member left."""
    popen = proc.popen
    with contextlib.suppress(ProcessLookupError):
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout)
        # the group's other members (a prefork worker's children) go with it
        os.killpg(popen.pid, signal.SIGKILL)


@contextlib.contextmanager
def cluster(weights: Path, logdir: Path, *, maxmemory_mb: int = 0, policy: str = "noeviction",
            env: dict[str, str] | None = None, keys: dict[str, str] | None = None,
            api_processes: int = 1, api_soft_files: int = 0) -> Iterator[Cluster]:
    """A started Redis and API (``api_processes`` of it; no worker yet); the processes' logs go to
    ``logdir``."""
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="bbcu-soak-") as tmp:
        c = Cluster(Path(tmp), logdir, weights, maxmemory_mb=maxmemory_mb, policy=policy, env=env,
                    api_processes=api_processes, api_soft_files=api_soft_files)
        c.keys = keys or {}
        try:
            c.start_redis()
            c.start_api()
            c.supervise()
            yield c
        finally:
            c.close()


def tiny_weights(directory: Path) -> Path:
    """A tiny random-init denoise network: jobs take milliseconds, the service is what is measured."""
    import torch

    from models import archs, checkpoints
    from models.config import denoise_config

    torch.manual_seed(0)
    config = denoise_config(nf=8, depth=4)
    checkpoints.save(directory / "soak_denoise_l.safetensors", archs.build(config).eval(), config,
                     {"provenance": "random init for the soak campaign"})
    return directory


def image(side: int, seed: int) -> bytes:
    """Random pixels: PNG cannot compress them, so the upload is about 3 bytes per pixel."""
    from PIL import Image

    a = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# counting


@dataclass
class Tally:
    """What became of one scenario's requests and jobs."""

    scenario: str
    sent: int = 0
    accepted: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    refused_without_retry_after: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    other_5xx: Counter[int] = field(default_factory=Counter)
    other_4xx: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    healthz_max_s: float = 0.0
    healthz_failures: int = 0
    pending: set[str] = field(default_factory=set)  # accepted jobs not yet known to be terminal
    events: Counter[str] = field(default_factory=Counter)  # what a scenario did, e.g. messages held at a kill
    first_refusal: dict[int, str] = field(default_factory=dict)  # status: the first such problem's detail
    needed_reader: int = 0  # jobs that ended only once a client read them (nothing else recovered them)
    aborted: str = ""  # why the scenario stopped early, if it did
    stranded: list[str] = field(default_factory=list)  # ids of the jobs settle() gave up on
    notes: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, response: httpx.Response | Exception) -> None:
        """Count one POST /restore answer (or the exception that stood for one)."""
        with self._lock:
            self.sent += 1
            if isinstance(response, Exception):
                self.transport_errors[type(response).__name__] += 1
                return
            status, job_id = response.status_code, response.headers.get("x-job-id")
            if job_id:  # a job exists: it is ours to follow to its end
                self.accepted += 1
                if status == 200:
                    self.succeeded += 1
                elif status in (202, 504):  # queued, or outlasted the synchronous wait: it goes on
                    self.pending.add(job_id)
                else:
                    code = _problem_code(response)
                    if input_lost(code, _problem_detail(response)):
                        self.lost[f"input lost ({code})"] += 1
                    else:
                        self.failed[code] += 1
            elif status in REFUSALS:
                self.refused[status] += 1
                self.first_refusal.setdefault(status, _problem_detail(response))
                if not response.headers.get("retry-after", "").isdigit():
                    self.refused_without_retry_after += 1
            elif status >= 500:
                self.other_5xx[status] += 1
            else:
                self.other_4xx[status] += 1

    def misses(self) -> list[str]:
        """The targets of issue 11 this scenario missed."""
        out = []
        if self.lost:
            out.append(f"{sum(self.lost.values())} lost")
        if self.aborted:
            out.append(f"aborted ({self.aborted})")
        if self.needed_reader:
            out.append(f"{self.needed_reader} stranded until read")
        if self.refused_without_retry_after:
            out.append(f"{self.refused_without_retry_after} refusals without Retry-After")
        if self.other_5xx:
            out.append(f"{sum(self.other_5xx.values())} other 5xx")
        if self.transport_errors:
            out.append(f"{sum(self.transport_errors.values())} transport errors")
        if self.healthz_max_s > HEALTHZ_TARGET_S or self.healthz_failures:
            out.append(f"/healthz {self.healthz_max_s:.2f} s")
        if self.accepted == 0:
            out.append("nothing accepted")
        if self.events["worker exits"]:  # a worker rides out Redis faults in its own process (issue 20)
            out.append(f"{self.events['worker exits']} worker exits")
        if self.events["keys evicted by Redis"]:
            out.append(f"Redis evicted {self.events['keys evicted by Redis']} keys")
        return out


def _problem_code(response: httpx.Response) -> str:
    """The error code of a failed job's problem (type ``urn:bbcu:problem:job-<code>``)."""
    with contextlib.suppress(ValueError):
        kind = str(response.json().get("type", ""))
        return kind.rsplit(":", 1)[-1].removeprefix("job-") or str(response.status_code)
    return str(response.status_code)


def input_lost(code: str, detail: str) -> bool:
    """A job failed because the service lost its input: accepted, then lost (``input_lost``; before
    that code existed, a ``timeout`` saying the input expired)."""
    return code == "input_lost" or (code == "timeout" and "input expired" in detail)


def _problem_detail(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(response.json().get("detail", ""))[:160]
    return response.text[:160]


def _fmt(counts: Counter[str] | Counter[int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items(), key=str)) or "0"


HEADER = ["scenario", "sent", "accepted", "refused (status:n)", "refused w/o Retry-After", "succeeded",
          "failed (code:n)", "lost", "stranded until read", "other 5xx", "transport errors",
          "max /healthz (s)", "verdict"]


def row(t: Tally) -> str:
    misses = t.misses()
    verdict = "pass" if not misses else "**miss**: " + ", ".join(misses)
    cells = [t.scenario, str(t.sent), str(t.accepted), _fmt(t.refused), str(t.refused_without_retry_after),
             str(t.succeeded), _fmt(t.failed), _fmt(t.lost) if t.lost else "0", str(t.needed_reader),
             _fmt(t.other_5xx),
             _fmt(t.transport_errors), f"{t.healthz_max_s:.3f}"
             + (f" ({t.healthz_failures} failed)" if t.healthz_failures else ""), verdict]
    return "| " + " | ".join(cells) + " |"


def table(tallies: list[Tally]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += [row(t) for t in tallies]
    notes = [f"- {t.scenario}: {n}" for t in tallies for n in t.notes]
    notes += [f"- {t.scenario}: first {status}: {detail}" for t in tallies
              for status, detail in sorted(t.first_refusal.items())]
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "")


# ---------------------------------------------------------------------------------------------------
# load


class HealthProbe:
    """GETs /healthz every 0.2 s on its own connection; the slowest answer goes into the tally."""

    def __init__(self, url: str, tally: Tally) -> None:
        self.url, self.tally = url, tally
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="soak-healthz", daemon=True)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=PROBE_TIMEOUT_S) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    ok = c.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - t0
                self.tally.healthz_max_s = max(self.tally.healthz_max_s, took)
                self.tally.healthz_failures += not ok
                self._stop.wait(max(0.0, PROBE_PERIOD_S - took))

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def client(url: str, concurrency: int, headers: dict[str, str] | None = None) -> httpx.Client:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.Client(base_url=url, timeout=120.0, limits=limits, headers=headers)


def post(c: httpx.Client, data: bytes, *, asynchronous: bool) -> httpx.Response | Exception:
    params = {"task": "denoise", **({"async": "true"} if asynchronous else {})}
    try:
        return c.post("/restore", params=params, files={"image": ("soak.png", data, "image/png")})
    except httpx.HTTPError as e:
        return e


def submit(url: str, tally: Tally, images: list[bytes], concurrency: int, *, asynchronous: bool,
           every: Callable[[int], None] | None = None, headers: dict[str, str] | None = None) -> None:
    """POST every image, ``concurrency`` at a time; ``every(i)`` runs after the i-th answer is counted."""
    done = 0
    lock = threading.Lock()

    def one(data: bytes) -> None:
        nonlocal done
        tally.record(post(c, data, asynchronous=asynchronous))
        if every is not None:
            with lock:
                done += 1
                i = done
            every(i)

    with client(url, concurrency, headers) as c, ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, images))


def unattended(c: Cluster, tally: Tally, within_s: float) -> None:
    """Watch the pending jobs' records in Redis, reading none through the API, until all are terminal
    or ``within_s`` passes; those still queued or running then are counted as stranded until read.

    The API recovers a dead worker's job when a client reads it; a job nobody asks about must be
    recovered all the same (a client may be gone, or waiting for a webhook).
    """
    import redis

    r = redis.Redis(port=c.redis_port, socket_timeout=2)
    active = set(tally.pending)
    deadline = time.monotonic() + within_s
    while active and time.monotonic() < deadline:
        with contextlib.suppress(redis.exceptions.RedisError):
            ids = sorted(active)
            for job_id, raw in zip(ids, r.mget([f"bbcu:job:{i}" for i in ids]), strict=True):
                # an unknown record is left to settle(), which reads it through the API (404: lost)
                if raw is None or json.loads(raw).get("status") in TERMINAL:
                    active.discard(job_id)
        time.sleep(0.5)
    tally.needed_reader = len(active)
    if active:
        tally.notes.append(f"{len(active)} jobs still queued or running {within_s:.0f} s after the fault "
                           "with no client reading them")


def settle(url: str, tally: Tally, within_s: float, headers: dict[str, str] | None = None) -> None:
    """Follow every pending job until it is terminal; what is not by the deadline is lost.

    Reading a job is also what lets the API notice a dead worker's job and queue it again. A succeeded
    job's result is fetched: a result that is gone (410) this early was lost too.
    """
    deadline = time.monotonic() + within_s
    waits: list[float] = []  # Retry-After of the reads refused this round (a key's rate limit)

    def refused(r: httpx.Response) -> bool:
        if r.status_code in REFUSALS:
            waits.append(float(r.headers.get("retry-after", "1")))
        return r.status_code in REFUSALS

    with client(url, 8, headers) as c, ThreadPoolExecutor(8) as pool:

        def look(job_id: str) -> tuple[str, str | None]:
            try:
                r = c.get(f"/jobs/{job_id}")
            except httpx.HTTPError:
                return job_id, None  # the API or Redis is not answering yet: look again
            if refused(r):
                return job_id, None
            if r.status_code == 404:
                return job_id, "unknown (404)"
            if r.status_code != 200:
                return job_id, None
            body = r.json()
            if body["status"] == "succeeded":
                try:
                    res = c.get(f"/jobs/{job_id}/result")
                except httpx.HTTPError:
                    return job_id, None
                if refused(res):
                    return job_id, None
                return job_id, ("succeeded" if res.status_code == 200 else
                                f"result gone ({res.status_code})" if res.status_code in (404, 410) else None)
            if body["status"] in TERMINAL:
                error = body.get("error") or {}
                code = str(error.get("code", body["status"]))
                if input_lost(code, str(error.get("detail", ""))):
                    return job_id, f"input lost ({code})"
                return job_id, "failed:" + code
            return job_id, None

        while tally.pending and time.monotonic() < deadline:
            for job_id, end in pool.map(look, sorted(tally.pending)):
                if end is None:
                    continue
                tally.pending.discard(job_id)
                if end == "succeeded":
                    tally.succeeded += 1
                elif end.startswith("failed:"):
                    tally.failed[end.removeprefix("failed:")] += 1
                else:
                    tally.lost[end] += 1
            if tally.pending:
                time.sleep(max([0.5, *waits]))  # as a client would: after the longest Retry-After
                waits.clear()
        if tally.pending:
            statuses: Counter[str] = Counter()
            for job_id in tally.pending:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    statuses[c.get(f"/jobs/{job_id}").json()["status"]] += 1
            tally.lost[f"stranded after {within_s:.0f} s ({_fmt(statuses)})"] += len(tally.pending)
            tally.stranded = sorted(tally.pending)
            tally.pending.clear()


def finish(c: Cluster, tally: Tally, scale: Scale, headers: dict[str, str] | None = None) -> None:
    """Give the accepted jobs time to end unread, then follow each through the API to its end."""
    unattended(c, tally, scale.unattended_s)
    settle(c.url, tally, scale.settle_s, headers)
    if tally.stranded:
        dump_stranded(c, tally)


def dump_stranded(c: Cluster, tally: Tally) -> None:
    """Write the stranded jobs' records and where their broker messages are to the log folder."""
    import redis

    r = redis.Redis(port=c.redis_port, socket_timeout=2, decode_responses=True)
    out = c.logdir / f"stranded-{tally.scenario}.json"
    with contextlib.suppress(redis.exceptions.RedisError):
        queued, unacked = r.lrange("cpu", 0, -1), r.hgetall("unacked")
        jobs = {i: {"record": json.loads(r.get(f"bbcu:job:{i}") or "null"),
                    "in_queue": sum(i in m for m in queued),
                    "in_unacked": sum(i in m for m in unacked.values())} for i in tally.stranded}
        out.write_text(json.dumps(jobs, indent=1))
        tally.notes.append(f"{len(jobs)} stranded jobs' records and messages in {out}")


# ---------------------------------------------------------------------------------------------------
# scenarios


def run_sync(c: Cluster, scale: Scale, tally: Tally) -> None:
    c.start_worker(tally)
    images = [image(SIDES["sync"], i) for i in range(scale.sync_n)]
    submit(c.url, tally, images, scale.sync_concurrency, asynchronous=False)
    finish(c, tally, scale)


def run_async(c: Cluster, scale: Scale, tally: Tally) -> None:
    c.stop_workers()
    images = [image(SIDES["async"], i) for i in range(scale.async_n)]
    t0 = time.monotonic()
    submit(c.url, tally, images, SUBMIT_CONCURRENCY, asynchronous=True)
    tally.notes.append(f"{scale.async_n} submitted with no worker in {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    c.start_worker(tally)
    finish(c, tally, scale)
    tally.notes.append(f"one worker (2 processes) ran the queue in {time.monotonic() - t0:.1f} s")


def _redis_count(c: Cluster, command: str, key: str) -> int:
    """LLEN or HLEN of a kombu key in the campaign's Redis (-1 while it does not answer)."""
    import redis

    with contextlib.suppress(redis.exceptions.RedisError):
        return int(redis.Redis(port=c.redis_port, socket_timeout=2).execute_command(command, key))
    return -1


def run_kill(c: Cluster, scale: Scale, tally: Tally) -> None:
    if not c.workers:
        c.start_worker(tally)
    worker = c.workers[0]
    images = [image(SIDES["kill"], i) for i in range(scale.kill_n)]

    def kill_at_half(i: int) -> None:
        if i == scale.kill_n // 2:
            # kombu keeps the messages a worker holds (running or prefetched) in the "unacked" hash
            held, queued = _redis_count(c, "HLEN", "unacked"), _redis_count(c, "LLEN", "cpu")
            c.kill_worker(worker)
            tally.events["messages held by the killed worker"] += held
            tally.notes.append(f"SIGKILL to the worker's process group after {i} answers, holding {held} "
                               f"messages with {queued} queued; a new worker under the same name started "
                               "once all were submitted")

    submit(c.url, tally, images, SUBMIT_CONCURRENCY, asynchronous=True, every=kill_at_half)
    c.start_worker(tally)
    finish(c, tally, scale)


def run_redis_restart(c: Cluster, scale: Scale, tally: Tally) -> None:
    if not c.workers:
        c.start_worker(tally)
    images = [image(SIDES["redis-restart"], i) for i in range(scale.restart_n)]
    restarted = threading.Event()

    def restart_at_a_third(i: int) -> None:
        if i == scale.restart_n // 3 and not restarted.is_set():
            restarted.set()
            t0 = time.monotonic()
            c.stop_redis()
            time.sleep(1.0)
            c.start_redis()
            tally.notes.append(f"redis-server stopped (SIGTERM) and started on its AOF after {i} answers; "
                               f"down {time.monotonic() - t0:.1f} s")

    # a quarter of the requests synchronous: some wait for their job while Redis is away
    sync_images, async_images = images[: len(images) // 4], images[len(images) // 4:]
    threads = [threading.Thread(target=submit, args=(c.url, tally, sync_images, 4),
                                kwargs={"asynchronous": False}),
               threading.Thread(target=submit, args=(c.url, tally, async_images, 8),
                                kwargs={"asynchronous": True, "every": restart_at_a_third})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finish(c, tally, scale)


def run_memory(c: Cluster, scale: Scale, tally: Tally) -> None:
    """``evict`` and ``redis-full``: more input bytes than Redis holds, sent with no worker; then one."""
    images = [image(SIDES["evict"], i) for i in range(scale.evict_n)]
    submit(c.url, tally, images, SUBMIT_CONCURRENCY, asynchronous=True)
    c.start_worker(tally)
    finish(c, tally, scale)


def run_keys(c: Cluster, scale: Scale, tally: Tally) -> None:
    """One API key floods asynchronous submissions while another sends synchronous requests one at a
    time: the flood meets its rate limit and job quota (429 with Retry-After), the other key is served."""
    c.start_worker(tally)
    flood, calm = ({"X-API-Key": c.keys[name]} for name in KEYS)
    calm_tally = Tally("keys (calm)")
    calm_n = max(10, scale.keys_n // 20)
    other = threading.Thread(target=submit, args=(c.url, calm_tally, [image(SIDES["sync"], i) for i in
                                                                     range(calm_n)], 1),
                             kwargs={"asynchronous": False, "headers": calm})
    other.start()
    submit(c.url, tally, [image(SIDES["sync"], i) for i in range(scale.keys_n)], SUBMIT_CONCURRENCY,
           asynchronous=True, headers=flood)
    other.join()
    finish(c, tally, scale, flood)
    tally.notes.append(f"another key's {calm_n} synchronous requests meanwhile, one at a time: "
                       f"{calm_tally.succeeded} succeeded, refused {_fmt(calm_tally.refused)}, other "
                       f"{_fmt(calm_tally.other_4xx + calm_tally.other_5xx)}")
    tally.events["calm key refused"] += calm_n - calm_tally.succeeded


def run_sized(c: Cluster, scale: Scale, tally: Tally) -> None:
    """``redis-sized``: more input bytes than the operator's Redis holds, sent with no worker; then one.
    Every accepted job must succeed (none evicted), the rest be refused with 503 and Retry-After."""
    images = [image(scale.sized_side, i) for i in range(scale.sized_n)]
    submit(c.url, tally, images, SUBMIT_CONCURRENCY, asynchronous=True)
    evicted = _redis_info(c, "stats").get("evicted_keys", -1)
    c.start_worker(tally)
    finish(c, tally, scale)
    evicted_after = _redis_info(c, "stats").get("evicted_keys", -1)
    tally.events["keys evicted by Redis"] += max(evicted, evicted_after)
    tally.notes.append(f"Redis evicted {evicted} keys before the worker started, {evicted_after} by the end")


def _redis_info(c: Cluster, section: str) -> dict[str, int]:
    """The integer fields of one INFO section of the campaign's Redis (empty while it does not answer)."""
    import redis

    with contextlib.suppress(redis.exceptions.RedisError):
        info = redis.Redis(port=c.redis_port, socket_timeout=2).info(section)
        return {k: int(v) for k, v in info.items() if isinstance(v, int)}
    return {}


def run_slowloris(c: Cluster, scale: Scale, tally: Tally) -> None:
    """``slowloris``: connections dribbling their request heads, more than the API's soft limit of open
    files, while synchronous requests are sent; the health probe runs throughout."""
    from app.server import raise_open_files_limit
    from benchmarks.slowloris import Dribblers

    c.start_worker(tally)
    if raise_open_files_limit() < Dribblers.files_needed(scale.slowloris_n) + 256:
        raise OSError(f"the campaign itself needs {scale.slowloris_n + 320} open files (hard limit)")
    port = int(c.url.rsplit(":", 1)[1])
    with Dribblers("127.0.0.1", port, scale.slowloris_n) as flood:
        wait_until(lambda: flood.opened >= scale.slowloris_n, 60, None, "the flood's connections")
        images = [image(SIDES["sync"], i) for i in range(scale.slowloris_requests)]
        submit(c.url, tally, images, 4, asynchronous=False)
        opened, closed = flood.opened, flood.closed_by_server
    finish(c, tally, scale)
    tally.notes.append(f"{scale.slowloris_n} dribbling connections (one header line per 0.5 s, reopened "
                       f"when closed) against an API at a soft limit of {SLOWLORIS_SOFT_LIMIT} open files: "
                       f"{opened} opened, {closed} closed by the server")


SHARED = {"sync": run_sync, "async": run_async, "kill": run_kill, "redis-restart": run_redis_restart}


def memory_cluster(name: str, weights: Path, logdir: Path, scale: Scale,
                   tally: Tally) -> contextlib.AbstractContextManager[Cluster]:
    """A fresh Redis at a small maxmemory with docker-compose.yml's eviction policy. ``evict`` sizes the
    API's admission limits to half of maxmemory for inputs and three quarters for inputs and results
    (BBCU_MAX_QUEUED_BYTES, BBCU_MAX_STORED_BYTES), as compose does (1 and 1.5 GiB of 2 GB);
    ``redis-full`` leaves them above maxmemory, so Redis itself fills."""
    policy = compose_eviction_policy()
    maxmemory = scale.evict_maxmemory_mb << 20
    env = {"BBCU_MAX_UPLOAD_BYTES": str(1 << 20)}
    if name == "evict":
        env["BBCU_MAX_QUEUED_BYTES"] = str(maxmemory // 2)
        env["BBCU_MAX_STORED_BYTES"] = str(maxmemory * 3 // 4)
    side = SIDES["evict"]
    tally.notes.append(f"maxmemory {scale.evict_maxmemory_mb} MiB, policy {policy} (docker-compose.yml's), "
                       f"admission limit {'half of maxmemory' if name == 'evict' else 'the default'}; "
                       f"{scale.evict_n} inputs of {side}x{side} (about {len(image(side, 0)) >> 10} KiB "
                       "each) sent with no worker")
    return cluster(weights, logdir, maxmemory_mb=scale.evict_maxmemory_mb, policy=policy, env=env)


def keys_cluster(weights: Path, logdir: Path, tally: Tally) -> contextlib.AbstractContextManager[Cluster]:
    """A cluster whose API requires keys (BBCU_API_KEYS, where the settings have it), with the default
    rate limits and job quota; the keys are made here and only their digests reach the service."""
    keys = {name: f"bbcu_soak_{name}_{secrets.token_urlsafe(16)}" for name in KEYS}
    digests = ",".join(f"{name}=sha256:{hashlib.sha256(key.encode()).hexdigest()}"
                       for name, key in keys.items())
    tally.notes.append("API keys on, default rate limit and job quota")
    return cluster(weights, logdir, env={"BBCU_API_KEYS": digests}, keys=keys)


def campaign(names: list[str], scale: Scale, logdir: Path = LOGDIR,
             log: Callable[[str], None] = print) -> list[Tally]:
    """Run the named scenarios in order; the shared ones on one cluster, ``evict`` and ``redis-full``
    each on its own.

    The processes' logs are kept under ``logdir`` (one folder per cluster) for a look afterwards.
    """
    tallies = []

    def run(name: str, c: Cluster, scenario: Callable[[Cluster, Scale, Tally], None], tally: Tally) -> None:
        log(f"== {name}")
        exits = c.worker_exits
        with HealthProbe(c.url, tally):
            try:
                scenario(c, scale, tally)
            except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as e:
                # the campaign goes on to the other scenarios; this one's row says why it stopped
                tally.aborted = f"{type(e).__name__}: {e}"
                tally.lost["not followed (scenario aborted)"] += len(tally.pending)
                tally.pending.clear()
        if c.worker_exits > exits:
            tally.events["worker exits"] += c.worker_exits - exits
            tally.notes.append(f"{c.worker_exits - exits} worker(s) exited on their own and were started "
                               "again (as compose's restart: unless-stopped would)")
        tallies.append(tally)
        log(row(tally))

    with tempfile.TemporaryDirectory(prefix="bbcu-soak-weights-") as wdir:
        weights = tiny_weights(Path(wdir))
        shared = [n for n in names if n in SHARED]
        if shared:
            with cluster(weights, logdir / "shared", api_processes=scale.api_processes) as c:
                for name in shared:
                    run(name, c, SHARED[name], Tally(name))
        for name in [n for n in names if n in MEMORY]:
            tally = Tally(name)
            with memory_cluster(name, weights, logdir / name, scale, tally) as c:
                run(name, c, run_memory, tally)
        if "keys" in names:
            tally = Tally("keys")
            with keys_cluster(weights, logdir / "keys", tally) as c:
                run("keys", c, run_keys, tally)
        if "redis-sized" in names:
            tally = Tally("redis-sized")
            tally.notes.append(f"Redis --maxmemory {scale.sized_maxmemory_mb}mb --maxmemory-policy "
                               f"volatile-ttl, no BBCU_MAX_* settings; {scale.sized_n} uploads of "
                               f"{scale.sized_side}x{scale.sized_side} sent with no worker")
            with cluster(weights, logdir / "redis-sized", maxmemory_mb=scale.sized_maxmemory_mb,
                         policy="volatile-ttl") as c:
                run("redis-sized", c, run_sized, tally)
        if "slowloris" in names:
            with cluster(weights, logdir / "slowloris", api_soft_files=SLOWLORIS_SOFT_LIMIT) as c:
                run("slowloris", c, run_slowloris, Tally("slowloris"))
    return tallies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default all, in this order)")
    parser.add_argument("--quick", action="store_true", help="the scaled-down campaign (CI)")
    parser.add_argument("--api-processes", type=int, metavar="N",
                        help="API processes of the shared scenarios' service (default: 2, --quick 1)")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    if args.api_processes is not None:
        if args.api_processes < 1:
            parser.error("--api-processes must be at least 1")
        scale = replace(scale, api_processes=args.api_processes)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    names = [n for n in SCENARIOS if n in (args.scenarios or SCENARIOS)]
    if shutil.which("redis-server") is None:
        print("redis-server not found (make redis installs it)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    tallies = campaign(names, scale, log=lambda s: print(s, file=sys.stderr, flush=True))
    head = (f"# bbcu soak — {time.strftime('%Y-%m-%d %H:%M:%S')} — {'quick' if args.quick else 'full'} "
            f"campaign, {os.cpu_count()} CPUs, {time.monotonic() - t0:.0f} s\n\n"
            f"Scale: {scale}\n\n")
    out = head + table(tallies) + "\n"
    print(out)
    Path(".bench").mkdir(exist_ok=True)
    Path(".bench/soak.md").write_text(out)
    return 1 if any(t.misses() for t in tallies) else 0


if __name__ == "__main__":
    sys.exit(main())
