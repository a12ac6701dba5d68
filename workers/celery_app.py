"""The Celery application on Redis and the dispatcher the API uses to enqueue jobs.

Messages are JSON and carry a job id only. Queues ``cpu`` and ``gpu`` are declared up front
(no queue is created by accident); late acks, one prefetched message per process, rejection
when a worker process dies, soft and hard time limits, and a visibility timeout above the hard
limit so Redis never hands a running job to a second worker.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu import Queue

from models.errors import OptionError
from workers.broker import KombuQueues
from workers.contract import QUEUES, TASK_NAME, now
from workers.errors import NoWorker, StoreUnavailable
from workers.redis_store import RedisStore
from workers.registry import WorkerRegistry
from workers.settings import Settings

# a worker that Celery stopped on an unrecoverable error starts again after this long, doubled each
# time up to the most
RESTART_MIN_S, RESTART_MAX_S = 1.0, 30.0
log = logging.getLogger(__name__)


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured from the settings (the tasks module registers the task)."""
    if not settings.broker_url:
        raise ValueError("Celery mode needs BBCU_BROKER_URL")
    app = Celery("bbcu", broker=settings.broker_url, backend=settings.broker_url, set_as_current=True)
    app.conf.update(
        task_queues=[Queue(q, routing_key=q) for q in QUEUES],
        task_default_queue="cpu",
        task_create_missing_queues=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # the job checks the soft limit itself between tiles (a clean failure at a safe point);
        # Celery's soft limit, halfway to the hard one, interrupts a job stuck elsewhere, and the hard
        # limit replaces the process
        task_soft_time_limit=(settings.soft_time_limit_s + settings.hard_time_limit_s) / 2,
        task_time_limit=settings.hard_time_limit_s,
        task_ignore_result=True,
        result_expires=settings.result_ttl_s,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_timeout=settings.redis_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits out a long Redis outage, never gives up
        # no retry inside kombu: its recovery from a refused publish (Redis full, or gone) closes
        # channels that other threads' producers are using (AttributeError, a 500); a failed publish is
        # a 503 with Retry-After and the client sends again
        task_publish_retry=False,
        worker_hijack_root_logger=False,
        worker_proc_alive_timeout=120.0,  # a child imports torch before it reports ready
        # a running job outlives a broker reconnect (its store retries through a Redis restart) rather
        # than being cancelled; the sweeper (workers/lost.py) recovers any job that still goes astray
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        include=["workers.tasks"],
    )
    return app


class CeleryDispatcher:
    """Enqueues job ids to Celery; knows which queues have live workers from their heartbeats."""

    mode = "celery"

    def __init__(self, settings: Settings, store: RedisStore) -> None:
        self.settings = settings
        self.store = store
        self.celery = create_celery(settings)
        self.broker = KombuQueues(store)  # the queues' messages, for the sweeper (workers/lost.py)

    def pick_queue(self, device: str) -> str:
        """``auto``: the GPU queue when a GPU worker is alive, else the CPU queue."""
        if device == "cpu":
            return "cpu"
        has_gpu = bool(self.store.registry.workers("gpu"))
        if device == "gpu" and not has_gpu:
            # a GPU worker that is expected (required, or one ran lately) may come back: 503, retry;
            # with none in this deployment, retrying cannot help: the request itself is at fault (422)
            if "gpu" in self.settings.required_queue_list or self.store.registry.seen("gpu"):
                raise NoWorker("device=gpu requested but no GPU worker is running now (one is expected: "
                               "retry later, or send device=auto)")
            raise OptionError("device=gpu: this service has no GPU worker (none has run lately and "
                              "BBCU_REQUIRED_QUEUES does not list gpu); send device=auto or cpu")
        return "gpu" if has_gpu else "cpu"

    def submit(self, job_id: str, queue: str) -> None:
        from kombu.exceptions import OperationalError
        from redis.exceptions import RedisError

        try:
            self.celery.send_task(TASK_NAME, args=[job_id], queue=queue, ignore_result=True)
        except OperationalError as e:
            # not the error's text: it names the broker's host and port, and this goes to clients in a 503
            raise StoreUnavailable(f"broker unreachable ({type(e).__name__})") from e
        except RedisError as e:  # e.g. a full Redis (noeviction) refusing the message
            raise StoreUnavailable(f"broker refused the job: {e}") from e

    def workers(self) -> dict[str, list[dict[str, Any]]]:
        return {q: self.store.registry.workers(q) for q in QUEUES}

    def queue_lengths(self) -> dict[str, int]:
        return {q: self.broker.length(q) for q in QUEUES}

    def close(self) -> None:
        self.celery.close()


def _rss_bytes(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_stats() -> dict[str, int]:
    """Resident memory of this worker and its pool processes; CUDA memory if this process uses CUDA."""
    pids = ["self"]
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids += f.read().split()
    except OSError:
        pass  # no /proc (not Linux): report this process only
    stats = {"rss_bytes": sum(_rss_bytes(p) for p in pids)}
    torch = sys.modules.get("torch")  # only a worker that already runs jobs here has it
    if torch is not None and torch.cuda.is_initialized():
        stats["gpu_allocated_bytes"] = int(torch.cuda.memory_allocated())
        stats["gpu_reserved_bytes"] = int(torch.cuda.memory_reserved())
    return stats


def held_jobs() -> list[str] | None:
    """The job ids of the messages this worker has received and not finished (running or about to);
    None if they could not be read (the sweeper then judges by the heartbeat alone)."""
    from celery.worker import state

    for _ in range(3):
        try:  # Celery's consumer thread changes the set while we read it
            return [str(r.args[0]) for r in tuple(state.reserved_requests) if r.args]
        except RuntimeError:
            continue
    return None


def _children() -> set[int]:
    kids: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                kids.update(int(k) for k in f.read().split())
    except OSError:
        pass  # no /proc (not Linux): no pool process is seen
    return kids


class PreloadedProcesses:
    """The prefork pool processes that finished preloading torch and the engine.

    Shared memory set up before the fork: each pool process writes its pid into a free slot once
    ``preload`` returned; the main process counts the slots whose pid is one of its live children
    (a replaced process frees its slot by dying). Until one is counted, no job could start.
    """

    def __init__(self, concurrency: int) -> None:
        import multiprocessing

        self._pids = multiprocessing.Array("i", 2 * concurrency + 2)

    def mark(self) -> None:
        """In a pool process: preloaded."""
        me = os.getpid()
        with self._pids.get_lock():
            for i in range(len(self._pids)):
                pid = int(self._pids[i])
                if pid == 0 or not os.path.exists(f"/proc/{pid}"):
                    self._pids[i] = me
                    return

    def count(self) -> int:
        """In the main process: live pool processes that finished preloading."""
        live = _children()
        with self._pids.get_lock():
            pids = [int(self._pids[i]) for i in range(len(self._pids))]
        return len([pid for pid in pids if pid and pid in live])


class Heartbeat:
    """A thread in the worker's main process announcing it in Redis until stopped.

    ``ready_processes`` says how many processes can start a job now: a worker beats from the moment
    Celery is up, but only counts as ready (``/readyz``) once one of them has preloaded.
    """

    def __init__(self, registry: WorkerRegistry, queues: list[str], period_s: float, info: dict[str, Any],
                 ready_processes: Callable[[], int]) -> None:
        self.registry = registry
        self.queues = queues
        self.period_s = period_s
        self.ready_processes = ready_processes
        self.name = f"celery@{socket.gethostname()}"
        # host: what the container healthcheck looks for; since: tells a restart under the same name
        self.info = {"queues": queues, "host": socket.gethostname(), **info}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bbcu-heartbeat", daemon=True)

    def start(self, name: str) -> None:
        """Start beating as Celery node ``name`` (the name jobs record as their worker); again after a
        ``stop`` when the worker starts again in this process."""
        self.name = name
        self.info.update(worker=name, since=now())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bbcu-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                # jobs: what this worker holds right now, so the API's sweeper (workers/lost.py) can
                # tell a job that vanished (hard time limit, lost write) from one still running
                ready = self.ready_processes()
                info = {**self.info, **memory_stats(), "jobs": held_jobs(), "at": now(),
                        "ready": ready > 0, "ready_processes": ready}
                for q in self.queues:
                    self.registry.beat(q, self.name, info, ttl_s=3 * self.period_s)
            except StoreUnavailable:
                pass  # Redis is down: the beat lapses, readiness says so; next round retries
            if self._stop.wait(self.period_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # a worker stopped before it was ready never started beating
            self._thread.join(timeout=self.period_s)
        try:
            for q in self.queues:
                self.registry.forget_worker(q, self.name)
        except StoreUnavailable:
            pass  # the keys expire on their own


def run_worker(settings: Settings, queues: list[str], *, pool: str, concurrency: int, log_level: str,
               hostname: str | None, device: str) -> int:
    """Run a Celery worker on ``queues`` until it is stopped, announcing itself with a heartbeat; the
    worker's exit status (1 after an unrecoverable error).

    The heartbeat starts when Celery reports the worker ready (under its node name) and stops at
    shutdown. With a prefork pool torch is imported in each child after the fork, never in the
    parent; solo and thread pools run jobs in this process, so it imports torch before starting.
    """
    from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

    from workers.jobs import preload

    app = create_celery(settings)
    import workers.tasks  # noqa: F401  (registers the task with this app)

    if pool == "prefork":
        preloaded = PreloadedProcesses(concurrency)

        def preload_child(**_: Any) -> None:
            preload(settings.torch_threads)
            preloaded.mark()

        worker_process_init.connect(preload_child, weak=False)
        ready_processes = preloaded.count
    else:
        preload(settings.torch_threads)  # before Celery starts: every thread can run a job at once
        ready_processes = (lambda: concurrency) if pool == "threads" else (lambda: 1)
    beat = Heartbeat(RedisStore.from_settings(settings).registry, queues, settings.heartbeat_s,
                     {"pool": pool, "concurrency": concurrency, "device": device}, ready_processes)
    worker_ready.connect(lambda sender, **_: beat.start(sender.hostname), weak=False)
    started: list[Any] = []  # the WorkController, to read its exit status once it stops
    worker_init.connect(lambda sender, **_: started.append(sender), weak=False)
    worker_shutdown.connect(lambda **_: beat.stop(), weak=False)
    argv = ["worker", f"--queues={','.join(queues)}", f"--pool={pool}", f"--concurrency={concurrency}",
            f"--loglevel={log_level.upper()}", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    delay_s = RESTART_MIN_S
    while True:
        began = time.monotonic()
        app.worker_main(argv)
        # worker_main drops the worker's exit status: Celery's own stop (a signal) keeps it
        code = int(started[-1].exitcode or 0) if started else 1
        if code == 0 or not started or shutdown_requested():
            return code
        # an unrecoverable error (Redis full at start-up, kombu failing to reconnect after a Redis
        # restart): start again here rather than leave the queue to a supervisor that may not exist
        if time.monotonic() - began > RESTART_MAX_S:
            delay_s = RESTART_MIN_S  # it ran a good while: a new fault, not the same one again
        log.error("the worker stopped on an unrecoverable error (exit %d); it starts again in this "
                  "process in %.0f s", code, delay_s)
        if _wait_unless_stopped(delay_s):
            return code
        delay_s = min(RESTART_MAX_S, delay_s * 2)


def shutdown_requested() -> bool:
    """Whether a signal asked this worker to stop (Celery's handlers set these flags)."""
    from celery.worker import state

    return state.should_stop not in (None, False) or state.should_terminate not in (None, False)


def _wait_unless_stopped(seconds: float) -> bool:
    """Sleep ``seconds`` unless a stop is asked for meanwhile; True if it was."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if shutdown_requested():
            return True
        time.sleep(0.2)
    return shutdown_requested()
