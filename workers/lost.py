"""Recovering jobs that nobody will finish: a running job whose worker is gone or no longer runs it.

Celery alone strands such jobs: a worker killed outright (or restarted under the same name, as a
container is) leaves its message unacknowledged until the visibility timeout; a job whose process hit
the hard time limit, or whose result could not be written while Redis was down, is acknowledged with
its record still ``running``. So the API runs a ``Sweeper``: once per heartbeat period (one API
process per period, under a Redis lock) it reads the workers' heartbeats, which list the jobs each
worker holds, and judges every running job:

- its worker stopped beating, restarted, or beats without the job: the job is queued again (a new
  message; ``attempt`` counts the runs) up to ``LOST_WORKER_RETRIES`` times, then failed
  ``worker_lost``;
- it vanished from its worker after running past the soft time limit, or it is still ``running`` past
  the hard limit (+ grace): its process was killed by the hard time limit, failed ``timeout``.

and every queued job whose message no live worker will run (a dead worker held it, or it was lost on
its way) gets a new message.

A run only starts from ``queued`` and only ends the run it started, so a stale message (the dead
worker's own, redelivered later) does nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from workers.contract import LOST_WORKER_RETRIES, QUEUES, JobRecord, JobStatus, now
from workers.dispatch import Dispatcher
from workers.errors import ErrorCode, StoreUnavailable
from workers.lifecycle import Lifecycle, Notify
from workers.redis_store import RedisStore
from workers.settings import Settings
from workers.store import JobStore

if TYPE_CHECKING:
    from workers.celery_app import CeleryDispatcher

GRACE_S = 30.0
log = logging.getLogger(__name__)

Beats = dict[str, dict[str, Any]]


def live_workers(dispatcher: Dispatcher) -> Beats:
    """The heartbeat of every live worker, by its node name."""
    return {str(w.get("worker")): w for ws in dispatcher.workers().values() for w in ws}


def why_lost(rec: JobRecord, beats: Beats, settings: Settings) -> tuple[str, bool] | None:
    """Why the running job ``rec`` has nobody left to finish it, and whether a time limit ended it;
    None while its worker may still be running it."""
    if rec.status != JobStatus.running or rec.started_at is None or not rec.worker:
        return None
    age = now() - rec.started_at
    limit = settings.hard_time_limit_s + GRACE_S
    if age > limit:
        return f"no result {limit:.0f} s after the job started: its process hit the hard time limit", True
    beat = beats.get(rec.worker)
    if beat is None:
        # a heartbeat lapses after three periods: judge only jobs older than that
        if age > 3 * settings.heartbeat_s:
            return f"worker {rec.worker} stopped (no heartbeat) while running the job", False
        return None
    if beat.get("since", 0.0) > rec.started_at:
        return f"worker {rec.worker} restarted while running the job", False
    held, at = beat.get("jobs"), beat.get("at")
    # a beat taken after the run started (same host, same clock) that no longer lists the job
    if held is not None and at is not None and at > rec.started_at and rec.id not in held:
        if at - rec.started_at >= settings.soft_time_limit_s:
            return (f"the job ran past the time limit of {settings.soft_time_limit_s} s and its process "
                    f"was replaced (hard limit {settings.hard_time_limit_s} s)"), True
        return (f"worker {rec.worker} no longer runs the job (its process died, or the job could not "
                "be written back while Redis was unreachable)"), False
    return None


def recover_if_lost(rec: JobRecord, store: JobStore, settings: Settings, dispatcher: Dispatcher,
                    beats: Beats | None = None, notify: Notify | None = None) -> JobRecord:
    """``rec``; or, when nobody will finish it, the job queued again (failed once it ran out of
    attempts), or failed ``timeout`` when a time limit ended it. ``beats``: the live workers' heartbeats
    if already read (read from the dispatcher otherwise); ``notify``: sends a changed job's webhook (its
    worker is gone and cannot)."""
    if dispatcher.mode != "celery" or rec.status != JobStatus.running:
        return rec
    verdict = why_lost(rec, live_workers(dispatcher) if beats is None else beats, settings)
    if verdict is None:
        return rec
    jobs = Lifecycle(store, notify)
    reason, timed_out = verdict
    if timed_out:
        return jobs.lose(rec, ErrorCode.timeout, reason)
    if rec.attempt > LOST_WORKER_RETRIES:
        return jobs.lose(rec, ErrorCode.worker_lost, f"{reason} (run {rec.attempt} times)")
    # only the run that was judged: a job another run took meanwhile is left alone
    again = jobs.requeue(rec)
    if again is None:
        return store.get(rec.id) or rec
    try:
        dispatcher.submit(rec.id, again.queue)
    except StoreUnavailable:
        jobs.unrequeue(rec, again)  # no message went out
        raise
    log.warning("job %s queued again (attempt %d): %s", rec.id, again.attempt, reason)
    return again


def sweep(store: RedisStore, settings: Settings, dispatcher: CeleryDispatcher,
          notify: Notify) -> list[JobRecord]:
    """Judge every admitted running job once, and send again the queued jobs whose message no live
    worker will run; the records that changed (each one's webhook sent through ``notify``)."""
    beats = live_workers(dispatcher)  # before the records: a beat that lacks a job predates its read
    changed = []
    queued = []
    for rec in store.records(store.admitted_jobs()):
        if rec is not None and rec.status == JobStatus.queued:
            queued.append(rec)
        if rec is None or rec.status != JobStatus.running:
            continue
        judged = recover_if_lost(rec, store, settings, dispatcher, beats, notify)
        if judged.status != rec.status:
            changed.append(judged)
    resend_orphans(store, settings, dispatcher, beats, queued)
    return changed


def resend_orphans(store: RedisStore, settings: Settings, dispatcher: CeleryDispatcher, beats: Beats,
                   queued: list[JobRecord]) -> list[str]:
    """Jobs still ``queued`` whose message no live worker will run: one a worker received and died
    holding (prefetched, not yet started; the broker would hand it out again only after the visibility
    timeout), or one lost on its way (a worker killed between taking it from the queue and recording
    it as held). Each gets a new message and a dead one is dropped; the ids of those jobs."""
    listed: set[str] = set()
    for beat in beats.values():
        if beat.get("jobs") is None:
            return []  # a worker that does not say what it holds: nothing can be judged
        listed.update(beat["jobs"])
    # a message delivered (or a job created) just now may not be in a beat (or the queue) yet
    settled = now() - 3 * settings.heartbeat_s
    candidates = [r for r in queued if r.created_at < settled and r.id not in listed]
    # the queues before the held messages: a message moving from one to the other is seen in either
    waiting = dispatcher.broker.waiting_jobs(QUEUES) if candidates else set()
    held = dispatcher.broker.held_messages()
    for tag, job, at in held:
        if at < settled and job not in listed:
            dispatcher.broker.drop_held(tag)  # its worker is dead: the message would only come back stale
    alive = waiting | {job for _, job, at in held if at >= settled}
    sent = []
    for rec in candidates:
        if rec.id not in alive:
            # read again: it may have started (or ended) since the sweep read it
            current = store.get(rec.id)
            if current is not None and current.status == JobStatus.queued and current.attempt == rec.attempt:
                dispatcher.submit(rec.id, rec.queue)
                log.warning("job %s sent again: no live worker holds its message and none waits", rec.id)
                sent.append(rec.id)
    return sent


class Sweeper:
    """A thread of the API process sweeping once per heartbeat period while it holds the sweep lock."""

    def __init__(self, store: RedisStore, settings: Settings, dispatcher: CeleryDispatcher,
                 notify: Notify) -> None:
        self.store = store
        self.settings = settings
        self.dispatcher = dispatcher
        self.notify = notify
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bbcu-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        period = self.settings.heartbeat_s
        while not self._stop.wait(period):
            try:
                # several API processes: the first to take the lock this period sweeps
                if self.store.claim("sweep", 0.9 * period):
                    sweep(self.store, self.settings, self.dispatcher, self.notify)
            except StoreUnavailable as e:
                log.warning("sweep skipped: %s", e)  # Redis is down: the next period tries again

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.heartbeat_s + self.settings.redis_timeout_s)
