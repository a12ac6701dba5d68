"""The soak campaign (benchmarks/load.py, ``make soak``) scaled down to CI time: real redis-server, API and
Celery worker processes, real HTTP. Every accepted job must end (none lost or stranded), every refusal
must carry Retry-After, no other 5xx, and /healthz must answer within 1 s throughout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.load import HEALTHZ_TARGET_S, QUICK, Tally, campaign, table

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (make test installs it)")


def assert_targets(tallies: list[Tally], names: list[str], logdir: Path) -> None:
    assert [t.scenario for t in tallies] == names
    report = table(tallies) + f"\n(process logs under {logdir})"
    for t in tallies:
        assert t.sent > 0 and t.accepted > 0, report
        assert not t.lost, report
        assert t.refused_without_retry_after == 0, report
        assert not t.other_5xx and not t.transport_errors and not t.other_4xx, report
        # every request is counted once: a job, a refusal; every job reached an end
        assert t.accepted + sum(t.refused.values()) == t.sent, report
        assert t.succeeded + sum(t.failed.values()) == t.accepted, report
        assert t.healthz_max_s < HEALTHZ_TARGET_S and t.healthz_failures == 0, report
        assert t.needed_reader == 0, report
        assert t.misses() == [], report


def test_load_loses_no_job(tmp_path: Path) -> None:
    """40 synchronous requests at concurrency 20; 100 submitted with no worker, then one starts: every
    job succeeds, none needs a client to read it before it ends."""
    names = ["sync", "async"]
    tallies = campaign(names, QUICK, logdir=tmp_path, log=lambda _: None)
    assert_targets(tallies, names, tmp_path)
    sync, queued = tallies
    assert sync.succeeded == sync.sent == QUICK.sync_n
    assert queued.succeeded == queued.sent == QUICK.async_n


# These miss their targets on main today (measured with benchmarks/load.py --quick): a SIGKILLed worker's
# running jobs are recovered only when a client reads them, and the messages it had prefetched wait for
# the visibility timeout (jobs left "queued"); a job whose worker loses Redis mid-run stays "running"
# (its worker's heartbeat lives on); under an evicting Redis the records and inputs of queued jobs
# vanish (404, or "input expired"), and with Redis itself full likewise. The `faults` branch of issue
# 11 fixes them: remove the skip once it has landed on main.
PENDING_FAULTS_FIX = pytest.mark.skip(reason="PENDING issue 11 `faults` branch (sweeper for a killed "
                                             "worker's jobs, Redis restart mid-job, noeviction): enable "
                                             "once it lands on main")


@PENDING_FAULTS_FIX
@pytest.mark.parametrize("name", ["kill", "redis-restart", "evict", "redis-full"])
def test_faults_lose_no_job(name: str, tmp_path: Path) -> None:
    """A worker SIGKILLed with jobs in hand (another started under its name), Redis restarted on its
    append-only file mid-flight, more inputs than Redis holds (admission limit under maxmemory, or not):
    no accepted job is lost or waits for a reader."""
    tallies = campaign([name], QUICK, logdir=tmp_path, log=lambda _: None)
    assert_targets(tallies, [name], tmp_path)
    if name == "kill":
        assert tallies[0].events["messages held by the killed worker"] >= 1  # it died with jobs in hand
