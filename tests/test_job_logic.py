"""The pure parts of the API and job layer, tested directly: header negotiation, the error table,
and when a running job is judged lost (queued again, then failed)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from app.api.negotiation import negotiate_format, parse_prefer
from app.errors import ANSWERS, refused
from app.jobs import job_problem
from models.errors import ImageDecodeError, ImageTooLargeError, UnknownModelError
from workers.contract import (
    ACTIVE,
    LOST_WORKER_RETRIES,
    QUEUES,
    ImageFacts,
    JobError,
    JobRecord,
    JobSpec,
    JobStatus,
    new_job_id,
    now,
)
from workers.errors import ErrorCode
from workers.lifecycle import move
from workers.lost import GRACE_S, recover_if_lost, resend_orphans, sweep
from workers.memory_store import MemoryStore
from workers.redis_store import RedisStore
from workers.settings import Settings
from workers.store import JobStore


@pytest.mark.parametrize("explicit,accept,want", [
    (None, None, "png"),
    (None, "", "png"),
    (None, "image/webp", "webp"),
    (None, "text/html, image/jpeg;q=0.8, image/webp;q=0.9", "webp"),
    (None, "IMAGE/JPEG", "jpeg"),
    (None, "image/webp;q=0.5, image/png", "png"),
    (None, "image/webp;q=bogus, image/jpeg;q=0.1", "jpeg"),
    (None, "*/*", "png"),
    ("jpeg", "image/webp", "jpeg"),
])
def test_negotiate_format(explicit: str | None, accept: str | None, want: str) -> None:
    assert negotiate_format(explicit, accept) == want  # type: ignore[arg-type]


@pytest.mark.parametrize("header,want", [
    (None, {}),
    ("respond-async", {"respond-async": ""}),
    ("respond-async, wait=10", {"respond-async": "", "wait": "10"}),
    ('Wait="5"; foo=bar', {"wait": "5"}),
    (" , handling=lenient,", {"handling": "lenient"}),
])
def test_parse_prefer(header: str | None, want: dict[str, str]) -> None:
    assert parse_prefer(header) == want


def test_every_error_code_has_one_answer() -> None:
    assert set(ANSWERS) == set(ErrorCode)
    assert ANSWERS[ErrorCode.unknown_model].status == 422
    assert ANSWERS[ErrorCode.worker_lost].status == 503


@pytest.mark.parametrize("error,status,slug", [
    (ImageDecodeError("not an image"), 415, "not-an-image"),
    (UnknownModelError("no such model"), 422, "unknown-model"),
])
def test_refused_input_answers_from_the_table(error: Exception, status: int, slug: str) -> None:
    p = refused(error)  # type: ignore[arg-type]
    assert (p.status, p.slug, p.detail) == (status, slug, str(error))


def test_too_large_carries_its_numbers() -> None:
    body = refused(ImageTooLargeError("too big", pixels=20, max_pixels=10)).body()
    assert body["status"] == 413 and body["pixels"] == 20 and body["max_pixels"] == 10


def _record(status: JobStatus, error: JobError | None = None) -> JobRecord:
    job_id = new_job_id()
    spec = JobSpec(id=job_id, task="denoise")
    return JobRecord(id=job_id, status=status, task="denoise", queue="cpu", created_at=now(), spec=spec,
                     error=error)


@pytest.mark.parametrize("status,error,want_status,want_slug", [
    (JobStatus.failed, JobError(code=ErrorCode.bad_image, detail="x"), 415, "job-bad_image"),
    (JobStatus.failed, JobError(code=ErrorCode.timeout, detail="x"), 504, "job-timeout"),
    (JobStatus.failed, None, 500, "job-internal"),
    (JobStatus.cancelled, None, 409, "job-cancelled"),
    (JobStatus.failed, JobError(code=ErrorCode.input_lost, detail="x"), 503, "job-input_lost"),
    (JobStatus.failed, JobError(code=ErrorCode.worker_lost, detail="x"), 503, "job-worker_lost"),
])
def test_failed_job_answers(status: JobStatus, error: JobError | None, want_status: int,
                            want_slug: str) -> None:
    rec = _record(status, error)
    p = job_problem(rec, retry_after_s=7)
    assert (p.status, p.slug, p.headers["X-Job-Id"], p.extra["job_id"]) == (want_status, want_slug, rec.id,
                                                                           rec.id)
    # a job the service lost may be sent again: its 503 says when
    assert p.headers.get("Retry-After") == ("7" if want_status == 503 else None)


def test_terminal_states() -> None:
    assert {s for s in JobStatus if s.terminal} == {JobStatus.succeeded, JobStatus.failed,
                                                    JobStatus.cancelled}
    assert not any(s.terminal for s in ACTIVE)


# --- judging lost jobs (a real Redis store and Celery dispatcher; heartbeats written by hand)


@pytest.fixture
def celery(redis_port: int) -> Iterator[tuple[RedisStore, object, Settings]]:
    from workers.celery_app import CeleryDispatcher

    settings = Settings(broker_url=f"redis://127.0.0.1:{redis_port}/9", heartbeat_s=1.0,
                        soft_time_limit_s=10, hard_time_limit_s=20)
    store = RedisStore.from_settings(settings)
    store.client.flushdb()  # a sweep sees every job of the database
    dispatcher = CeleryDispatcher(settings, store)
    try:
        yield store, dispatcher, settings
    finally:
        dispatcher.close()


def _running(store: JobStore, worker: str, started_ago_s: float) -> JobRecord:
    job_id = new_job_id()
    facts = ImageFacts(width=1, height=1, bytes=1, format="png")
    store.create(JobSpec(id=job_id, task="denoise"), facts, b"x")
    rec = move(store, job_id, JobStatus.running, ACTIVE, worker=worker, started_at=now() - started_ago_s)
    assert rec is not None
    return rec


def test_a_job_whose_worker_stopped_beating_is_queued_again_then_lost(celery) -> None:  # type: ignore[no-untyped-def]
    store, dispatcher, settings = celery
    queued = dispatcher.broker.length("cpu")
    rec = _running(store, "gone@host", started_ago_s=3 * settings.heartbeat_s + 1)
    for attempt in range(2, LOST_WORKER_RETRIES + 2):
        again = recover_if_lost(rec, store, settings, dispatcher)
        assert (again.status, again.attempt, again.worker, again.started_at) == (JobStatus.queued, attempt,
                                                                                 None, None)
        assert store.get(rec.id) == again
        assert dispatcher.broker.length("cpu") == queued + attempt - 1  # sent again
        rec = move(store, rec.id, JobStatus.running, ACTIVE, worker="gone@host",  # type: ignore[assignment]
                               started_at=now() - 3 * settings.heartbeat_s - 1)
    # lost once more than it may be retried: failed, and its input dropped
    lost = recover_if_lost(rec, store, settings, dispatcher)
    assert lost.status == JobStatus.failed and lost.error is not None
    assert lost.attempt == LOST_WORKER_RETRIES + 1
    assert f"run {LOST_WORKER_RETRIES + 1} times" in lost.error.detail
    assert lost.error.code == ErrorCode.worker_lost and "gone@host" in lost.error.detail
    assert store.get(rec.id).status == JobStatus.failed  # type: ignore[union-attr]
    assert dispatcher.broker.length("cpu") == queued + LOST_WORKER_RETRIES and store.input(rec.id) is None


def test_a_job_of_a_worker_restarted_under_its_name_is_queued_again(celery) -> None:  # type: ignore[no-untyped-def]
    store, dispatcher, settings = celery
    rec = _running(store, "back@host", started_ago_s=1)
    store.registry.beat("cpu", "back@host", {"worker": "back@host", "since": rec.started_at + 0.5}, ttl_s=60)
    again = recover_if_lost(rec, store, settings, dispatcher)
    assert (again.status, again.attempt) == (JobStatus.queued, 2)
    # a job another worker took meanwhile is not the run that was judged: left alone
    other = _running(store, "back@host", started_ago_s=1)
    move(store, other.id, JobStatus.running, ACTIVE, worker="other@host")
    assert recover_if_lost(other, store, settings, dispatcher).worker == "other@host"


def test_the_sweeper_sends_the_webhook_of_what_it_changed_only(celery) -> None:  # type: ignore[no-untyped-def]
    """A lost run is queued again or failed with its webhook sent once, through the lifecycle; a run its
    worker ended between the sweep's read and its judgement is left alone, with no second webhook."""
    store, dispatcher, settings = celery
    sent: list[JobRecord | None] = []
    lost = _running(store, "gone@host", started_ago_s=3 * settings.heartbeat_s + 1)
    store.update(lost.id, lambda r: r.model_copy(update={"attempt": LOST_WORKER_RETRIES + 1}))
    failed = recover_if_lost(lost.model_copy(update={"attempt": LOST_WORKER_RETRIES + 1}), store, settings,
                             dispatcher, {}, sent.append)
    assert failed.status == JobStatus.failed and sent == [failed] and store.input(lost.id) is None
    sent.clear()
    stale = _running(store, "gone@host", started_ago_s=3 * settings.heartbeat_s + 1)
    done = move(store, stale.id, JobStatus.succeeded, (JobStatus.running,), finished_at=now())
    judged = recover_if_lost(stale, store, settings, dispatcher, {}, sent.append)
    assert judged == done and sent == []  # the old sweep sent this job's 'completed' a second time


def test_a_job_its_live_worker_no_longer_holds_is_queued_again(celery) -> None:  # type: ignore[no-untyped-def]
    """The worker beats but its beat (taken after the run started) does not list the job: its process
    died, or the job's end could not be written; past the soft limit, the hard limit killed it."""
    store, dispatcher, settings = celery
    rec = _running(store, "alive@host", started_ago_s=2)
    beat = {"worker": "alive@host", "since": rec.started_at - 100, "at": rec.started_at + 1, "jobs": [rec.id]}
    store.registry.beat("cpu", "alive@host", beat, ttl_s=60)
    assert recover_if_lost(rec, store, settings, dispatcher).status == JobStatus.running  # it holds it
    store.registry.beat("cpu", "alive@host", {**beat, "at": rec.started_at - 0.1, "jobs": []}, ttl_s=60)
    assert recover_if_lost(rec, store, settings, dispatcher).status == JobStatus.running  # beat too old
    store.registry.beat("cpu", "alive@host", {**beat, "jobs": ["another"]}, ttl_s=60)
    again = recover_if_lost(rec, store, settings, dispatcher)
    assert (again.status, again.attempt) == (JobStatus.queued, 2)

    killed = _running(store, "alive@host", started_ago_s=settings.soft_time_limit_s + 2)
    store.registry.beat("cpu", "alive@host", {**beat, "at": now(), "jobs": []}, ttl_s=60)
    lost = recover_if_lost(killed, store, settings, dispatcher)
    assert lost.status == JobStatus.failed and lost.error is not None
    assert lost.error.code == ErrorCode.timeout and "time limit of 10 s" in lost.error.detail


def test_a_job_of_a_live_worker_is_left_running(celery) -> None:  # type: ignore[no-untyped-def]
    store, dispatcher, settings = celery
    store.registry.beat("cpu", "alive@host", {"worker": "alive@host"}, ttl_s=60)
    rec = _running(store, "alive@host", started_ago_s=5)
    assert recover_if_lost(rec, store, settings, dispatcher).status == JobStatus.running
    young = _running(store, "gone@host", started_ago_s=0)  # its worker may not have beaten yet
    assert recover_if_lost(young, store, settings, dispatcher).status == JobStatus.running


def test_a_job_past_the_hard_limit_times_out_even_with_a_live_worker(celery) -> None:  # type: ignore[no-untyped-def]
    store, dispatcher, settings = celery
    store.registry.beat("cpu", "alive@host", {"worker": "alive@host"}, ttl_s=60)
    rec = _running(store, "alive@host", started_ago_s=settings.hard_time_limit_s + GRACE_S + 1)
    lost = recover_if_lost(rec, store, settings, dispatcher)
    assert lost.error is not None and lost.error.code == ErrorCode.timeout
    assert "hard time limit" in lost.error.detail


def test_one_sweep_judges_every_running_job_without_a_reader(celery) -> None:  # type: ignore[no-untyped-def]
    store, dispatcher, settings = celery
    store.registry.beat("cpu", "alive@host", {"worker": "alive@host"}, ttl_s=60)
    kept = _running(store, "alive@host", started_ago_s=5)
    gone = _running(store, "gone@host", started_ago_s=3 * settings.heartbeat_s + 1)
    seen: list[JobRecord] = []
    changed = sweep(store, settings, dispatcher, seen.append)
    assert [r.id for r in changed] == [r.id for r in seen] == [gone.id]
    assert store.get(gone.id).status == JobStatus.queued  # type: ignore[union-attr]
    assert store.get(kept.id).status == JobStatus.running  # type: ignore[union-attr]
    # one sweeper per period across processes
    assert store.claim("test-sweep", 0.5) and not store.claim("test-sweep", 0.5)


def test_a_queued_job_no_live_worker_will_run_is_sent_again(celery) -> None:  # type: ignore[no-untyped-def]
    """A worker received a job's message (kombu: unacked) and died before starting it, or a message
    was lost on its way: once settled, a queued job whose message neither waits in the queue nor is held
    by a live worker gets a new one (the dead holder's is dropped); one whose message waits is left."""
    store, dispatcher, settings = celery
    facts = ImageFacts(width=1, height=1, bytes=1, format="png")
    held_id, lost_id, waiting_id = new_job_id(), new_job_id(), new_job_id()
    for job_id in (held_id, lost_id, waiting_id):
        store.create(JobSpec(id=job_id, task="denoise"), facts, b"x")
    dispatcher.submit(held_id, "cpu")  # lost_id: never sent, as if lost on its way

    def queued() -> list[JobRecord]:
        return [r for r in store.records([held_id, lost_id, waiting_id]) if r is not None]

    with dispatcher.celery.connection_for_read() as conn:  # kept open: a channel closing gives it back
        assert conn.default_channel.basic_get("cpu", no_ack=False) is not None
        dispatcher.submit(waiting_id, "cpu")
        [(_, held, at)] = dispatcher.broker.held_messages()
        assert held == held_id and abs(at - now()) < 5
        assert dispatcher.broker.waiting_jobs(QUEUES) == {waiting_id}
        alive = {"w@host": {"worker": "w@host", "jobs": [held_id]}}
        assert resend_orphans(store, settings, dispatcher, {}, queued()) == []  # just created: not judged
        time.sleep(3 * settings.heartbeat_s + 0.2)
        assert resend_orphans(store, settings, dispatcher, alive, queued()) == [lost_id]  # held: left
        assert resend_orphans(store, settings, dispatcher, {"w@host": {"worker": "w@host"}}, queued()) == []
        assert resend_orphans(store, settings, dispatcher, {}, queued()) == [held_id]  # its holder died
        assert dispatcher.broker.held_messages() == []
        assert dispatcher.broker.waiting_jobs(QUEUES) == {held_id, lost_id, waiting_id}
        assert dispatcher.broker.length("cpu") == 3
        assert resend_orphans(store, settings, dispatcher, {}, queued()) == []  # every message waits
        assert {r.status for r in queued()} == {JobStatus.queued}


def test_the_embedded_pool_never_judges_jobs_lost() -> None:
    from workers.embedded import EmbeddedPool

    settings = Settings(soft_time_limit_s=10, hard_time_limit_s=20)
    store = MemoryStore(60, 60)
    pool = EmbeddedPool(settings, store)
    try:
        rec = _running(store, "embedded", started_ago_s=10_000)
        assert recover_if_lost(rec, store, settings, pool).status == JobStatus.running
    finally:
        pool.close()
