"""The job state machine: every change of a job's status, with its clean-up and webhook, defined once.

    created -> queued -> running -> succeeded | failed | cancelled
    queued | running -> cancelled (the client)     queued -> failed (no message could be sent)
    running -> queued (a lost run, sent again)      running -> failed (a lost run out of attempts)

Each transition is guarded by the status it leaves, and the end of a run only ends the run that
started it (same worker, same start), so a stale or second delivery, or a run the sweeper judged lost
meanwhile, changes nothing. The API (cancel, submission), the workers (``JobRunner``) and the sweeper
(``workers/lost.py``) all go through ``Lifecycle``; nothing else writes a job's status.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from workers.contract import ACTIVE, ImageFacts, JobError, JobRecord, JobSpec, JobStatus, Timings, now
from workers.errors import ErrorCode, StoreUnavailable

if TYPE_CHECKING:
    from workers.store import JobStore

Notify = Callable[[JobRecord | None], None]


def created(spec: JobSpec, facts: ImageFacts) -> JobRecord:
    """The record of a job just accepted: queued."""
    return JobRecord(id=spec.id, status=JobStatus.queued, task=spec.task, queue=spec.queue,
                     created_at=now(), input=facts, spec=spec)


def move(store: JobStore, job_id: str, to: JobStatus, allowed: tuple[JobStatus, ...],
         **fields: Any) -> JobRecord | None:
    """Move a job to ``to`` if its status is in ``allowed``; None if it was not (or is unknown)."""
    return store.update(job_id, lambda r: r.model_copy(update={"status": to, **fields})
                        if r.status in allowed else None)


def same_run(current: JobRecord, run: JobRecord) -> bool:
    """Whether ``current`` is still the run ``run`` recorded (not ended, not started again)."""
    return (current.status == JobStatus.running and current.worker == run.worker
            and current.started_at == run.started_at)


def _silent(rec: JobRecord | None) -> None:
    """No webhook (a caller that sends none, or sends its own)."""


class Lifecycle:
    """The transitions of the jobs in ``store``; ``notify`` sends a changed record's webhook."""

    def __init__(self, store: JobStore, notify: Notify | None = None) -> None:
        self.store = store
        self.notify = notify or _silent

    def _end_run(self, run: JobRecord, to: JobStatus, **fields: Any) -> JobRecord | None:
        return self.store.update(run.id, lambda r: r.model_copy(update={"status": to, **fields})
                                 if same_run(r, run) else None)

    # --- the worker's side

    def start(self, job_id: str, worker: str | None) -> JobRecord | None:
        """Start a queued job's run (webhook ``start``); None if it is not queued: cancelled, or taken
        or finished by another delivery. A running job whose worker died is queued again by the
        sweeper, never started from here."""
        started = now()
        rec = self.store.update(job_id, lambda r: r.model_copy(update={
            "status": JobStatus.running, "started_at": started, "worker": worker,
            "timings": Timings(queue=(started - r.created_at) * 1000)}) if r.status == JobStatus.queued
            else None)
        if rec is not None:
            self.notify(rec)
        return rec

    def progress(self, job_id: str, fraction: float, eta_s: float | None = None) -> JobRecord | None:
        """Record a running job's progress (to 0.1 %) and time left (to 0.1 s); None if not running."""
        update = {"progress": round(min(1.0, max(0.0, fraction)), 3),
                  "eta_s": None if eta_s is None else round(max(0.0, eta_s), 1)}
        rec = self.store.update(job_id, lambda r: r.model_copy(update=update)
                                if r.status == JobStatus.running else None)
        self.notify(rec)
        return rec

    def succeed(self, run: JobRecord, **fields: Any) -> JobRecord | None:
        """End the run succeeded (its result already stored); None if it ended otherwise meanwhile, and
        then the result of a cancelled job is dropped: nobody may download it."""
        done = self._end_run(run, JobStatus.succeeded, progress=1.0, eta_s=0.0, finished_at=now(), **fields)
        if done is None:  # cancelled meanwhile, or this run was judged lost and the job queued again
            current = self.store.get(run.id)
            if current is None or current.status == JobStatus.cancelled:
                self.store.drop_result(run.id)
        return done

    def fail(self, run: JobRecord, code: ErrorCode, detail: str) -> JobRecord | None:
        """End the run failed; None if it was not running any more."""
        error = JobError(code=code, detail=detail)
        return self._end_run(run, JobStatus.failed, finished_at=now(), error=error)

    def stopped(self, job_id: str) -> JobRecord | None:
        """The run saw its job cancelled: drop any result; the record ends cancelled (if the client's
        cancel has not already ended it)."""
        self.store.drop_result(job_id)
        return move(self.store, job_id, JobStatus.cancelled, ACTIVE, finished_at=now())

    def settle(self, job_id: str, ended: JobRecord | None) -> None:
        """After a run: drop the input of a job that is over (not while another run of it goes on) and
        send the end's webhook when this run ended the job."""
        current = ended or self.store.get(job_id)
        if current is None or current.status.terminal:
            self.store.drop_input(job_id)
        self.notify(ended)

    # --- the API's side

    def cancel(self, job_id: str, detail: str = "cancelled by the client") -> JobRecord | None:
        """Cancel a queued or running job (a running one stops at its next tile), free its input and
        send its webhook; None if it had already finished."""
        rec = move(self.store, job_id, JobStatus.cancelled, ACTIVE, finished_at=now(),
                   error=JobError(code=ErrorCode.cancelled, detail=detail))
        if rec is not None:
            self.store.drop_input(job_id)
            self.notify(rec)
        return rec

    def unsent(self, job_id: str, reason: str) -> None:
        """A stored job whose message could not be sent (the client gets a 503 and no job): free its
        room first (a delete goes through even when Redis is full and refuses the record's update),
        then fail the record, each if Redis still answers."""
        with suppress(StoreUnavailable):
            self.store.drop_input(job_id)
        with suppress(StoreUnavailable):
            move(self.store, job_id, JobStatus.failed, ACTIVE, finished_at=now(),
                 error=JobError(code=ErrorCode.internal, detail=f"not queued: {reason}"))

    # --- the sweeper's side

    def requeue(self, run: JobRecord) -> JobRecord | None:
        """Queue a lost run's job again (``attempt`` + 1); None if the run is not the current one."""
        rec = self.store.update(run.id, lambda r: r.model_copy(update={
            "status": JobStatus.queued, "attempt": r.attempt + 1, "worker": None, "started_at": None,
            "progress": 0.0, "eta_s": None}) if same_run(r, run) else None)
        if rec is not None:
            self.notify(rec)
        return rec

    def unrequeue(self, run: JobRecord, again: JobRecord) -> None:
        """Undo ``requeue`` when no message went out, for the next sweep to judge the run again."""
        self.store.update(run.id, lambda r: run if r.status == JobStatus.queued and r.attempt == again.attempt
                          else None)

    def lose(self, run: JobRecord, code: ErrorCode, reason: str) -> JobRecord:
        """Fail a run nobody will finish (its input dropped, its webhook sent); the current record."""
        lost = self.fail(run, code, reason)
        if lost is not None:
            self.store.drop_input(run.id)
            self.notify(lost)
        return lost or self.store.get(run.id) or run
