"""Spreading a video's (or a long animation's) frames over the Celery workers, in chunks.

The run that took the job (the parent) decodes the frames, settles the options every frame must share
(the denoise strength), stores the frames in chunks of ``chunk_frames`` and sends one ``bbcu.chunk``
message per chunk to the job's queue. Any worker takes a chunk by a lease (a Redis key with a short
expiry, renewed while it works), restores its frames and stores them; the parent works through the
chunks too, from the last one back (the messages go from the first), and:

- counts progress in frames finished by anyone;
- re-runs a chunk whose lease lapsed before it was done (its worker died): nothing is lost;
- stops on cancel, as every chunk does at its next tile (each checks the job's record);
- assembles the result once, in order, after every chunk is done.

Chunks belong to one run of the job (its ``attempt``): when the sweeper queues the job again after its
parent died, the old run's messages find their run gone and do nothing. Every key expires after
``result_ttl_s`` and the parent deletes them when it ends. Embedded mode never splits a job.
"""

from __future__ import annotations

import io
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from workers.contract import JobRecord, JobStatus
from workers.errors import StoreUnavailable

if TYPE_CHECKING:
    from models.media.restore import FrameRestorer
    from models.pipeline import StageReport
    from models.stages import Strength
    from workers.redis_store import RedisStore
    from workers.settings import Settings

CHUNK_TASK_NAME = "bbcu.chunk"
_POLL_S = 0.1

Send = Callable[[str, str], None]  # (chunk reference, queue)
Check = Callable[[], None]  # raises to stop (cancelled, over time)


class ChunkAbandoned(Exception):
    """The chunk's run is over (cancelled, ended, or started again): stop working on it."""


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of one run of a job; travels as ``job:attempt:index`` (no broker message carries a
    bare job id for it, so recovery never mistakes a chunk message for the job's own)."""

    job: str
    attempt: int
    index: int

    def __str__(self) -> str:
        return f"{self.job}:{self.attempt}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> ChunkRef:
        job, attempt, index = text.split(":")
        return cls(job, int(attempt), int(index))


def pack(frames: Sequence[np.ndarray]) -> bytes:
    """Frames of one size as one compressed array (lossless; zlib level 1 is fast)."""
    buf = io.BytesIO()
    np.save(buf, np.stack(frames), allow_pickle=False)
    return zlib.compress(buf.getvalue(), 1)


def unpack(data: bytes) -> list[np.ndarray]:
    return list(np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False))


class ChunkBoard:
    """One run's chunks in Redis: inputs, the plan, leases, outputs and who finished what."""

    def __init__(self, store: RedisStore, job: str, attempt: int, ttl_s: int, lease_s: float) -> None:
        self.store, self.ttl_s, self.lease_ms = store, ttl_s, max(1, int(lease_s * 1000))
        self._base = store.key("chunk", job, str(attempt))

    def _k(self, *parts: object) -> str:
        return ":".join([self._base, *map(str, parts)])

    def publish(self, chunks: Sequence[bytes], plan: dict[str, Any]) -> None:
        with self.store.guard(), self.store.client.pipeline() as pipe:
            for i, data in enumerate(chunks):
                pipe.set(self._k("in", i), data, ex=self.ttl_s)
            pipe.set(self._k("plan"), json.dumps(plan), ex=self.ttl_s)
            pipe.execute()

    def plan(self) -> dict[str, Any] | None:
        with self.store.guard():
            raw = self.store.client.get(self._k("plan"))
        return json.loads(raw) if raw else None

    def input(self, i: int) -> bytes | None:
        with self.store.guard():
            raw = self.store.client.get(self._k("in", i))
        return bytes(raw) if raw is not None else None  # type: ignore[arg-type]

    def output(self, i: int) -> bytes | None:
        with self.store.guard():
            raw = self.store.client.get(self._k("out", i))
        return bytes(raw) if raw is not None else None  # type: ignore[arg-type]

    def claim(self, i: int, worker: str) -> bool:
        """Take chunk ``i`` unless someone holds it or it is done."""
        with self.store.guard():
            if self.store.client.hexists(self._k("done"), str(i)):
                return False
            return bool(self.store.client.set(self._k("lease", i), worker, nx=True, px=self.lease_ms))

    def renew(self, i: int) -> None:
        with self.store.guard():
            self.store.client.pexpire(self._k("lease", i), self.lease_ms)

    def leased(self, i: int) -> bool:
        with self.store.guard():
            return bool(self.store.client.exists(self._k("lease", i)))

    def finish(self, i: int, worker: str, out: bytes, reports: list[StageReport]) -> None:
        """Store chunk ``i``'s frames and say who made them, with its stage reports; ChunkAbandoned
        once the parent cleared the run (ended, cancelled): nothing is written after that."""
        import redis

        mark = json.dumps({"worker": worker, "reports": [asdict(r) for r in reports]})
        plan = self._k("plan")
        with self.store.guard(), self.store.client.pipeline() as pipe:
            try:
                pipe.watch(plan)
                if not pipe.exists(plan):
                    raise ChunkAbandoned(f"chunk {i}: its run is over")
                pipe.multi()
                pipe.set(self._k("out", i), out, ex=self.ttl_s)
                pipe.hset(self._k("done"), str(i), mark)
                pipe.expire(self._k("done"), self.ttl_s)
                pipe.delete(self._k("lease", i))
                pipe.execute()
            except redis.WatchError as e:
                raise ChunkAbandoned(f"chunk {i}: its run ended meanwhile") from e

    def release(self, i: int) -> None:
        with self.store.guard():
            self.store.client.delete(self._k("lease", i))

    def done(self) -> dict[int, dict[str, Any]]:
        with self.store.guard():
            marks = self.store.client.hgetall(self._k("done"))
        return {int(k): json.loads(v) for k, v in marks.items()}

    def clear(self, n: int) -> None:
        keys = [self._k("plan"), self._k("done")]
        keys += [self._k(kind, i) for i in range(n) for kind in ("in", "out", "lease")]
        with self.store.guard():
            self.store.client.delete(*keys)


def split(frames: Sequence[np.ndarray], size: int) -> list[list[np.ndarray]]:
    return [list(frames[i:i + size]) for i in range(0, len(frames), size)]


class Fanout:
    """The parent's and the chunk workers' sides of a job spread over the workers."""

    def __init__(self, store: RedisStore, settings: Settings, send: Send) -> None:
        self.store, self.settings, self.send = store, settings, send
        # a worker renews its lease at every tile: three missed renewals and the chunk is free again
        self.lease_s = max(5.0, 3 * settings.heartbeat_s)

    def board(self, ref: ChunkRef) -> ChunkBoard:
        return ChunkBoard(self.store, ref.job, ref.attempt, self.settings.result_ttl_s, self.lease_s)

    def run(self, run: JobRecord, frames: Sequence[np.ndarray], restorer: FrameRestorer, worker: str,
            check: Check, progress: Callable[[float, int], None]) -> tuple[list[np.ndarray], dict[str, int],
                                                                           list[StageReport]]:
        """The parent: publish the chunks, work on them from the end, wait for the rest and collect
        them in order; the restored frames, the frames each worker made and the merged reports."""
        from models.media.restore import merge_reports
        from models.pipeline import StageReport

        restorer.settle_strength(frames[0])
        chunks = split(frames, self.settings.chunk_frames)
        sizes = [len(c) for c in chunks]
        ref0 = ChunkRef(run.id, run.attempt, 0)
        board = self.board(ref0)
        board.publish([pack(c) for c in chunks], {"strength": restorer.strength, "sizes": sizes})
        try:
            for i in range(len(chunks)):
                self.send(str(ChunkRef(run.id, run.attempt, i)), run.queue)
            while True:
                check()
                done = board.done()
                finished = sum(sizes[i] for i in done)
                if len(done) == len(chunks):
                    break
                progress(finished, len(frames))
                # the last chunk nobody holds (a dead worker's lease lapses: its chunk is run again)
                free = [i for i in reversed(range(len(chunks))) if i not in done and not board.leased(i)]
                if free and board.claim(free[0], worker):
                    i = free[0]
                    def within(d: float, t: int, base: int = finished) -> None:
                        progress(base + d, len(frames))

                    self._work(board, i, chunks[i], restorer, worker, check, within)
                else:
                    time.sleep(_POLL_S)
            out = [f for i in range(len(chunks)) for f in unpack(self._output(board, i))]
        finally:
            board.clear(len(chunks))
        by_worker: dict[str, int] = {}
        reports: list[StageReport] = []
        for i, mark in sorted(done.items()):
            by_worker[mark["worker"]] = by_worker.get(mark["worker"], 0) + sizes[i]
            reports = merge_reports(reports, [StageReport(**r) for r in mark["reports"]])
        return out, by_worker, reports

    @staticmethod
    def _output(board: ChunkBoard, i: int) -> bytes:
        data = board.output(i)
        if data is None:  # marked done, then gone: expired or evicted (Redis lost it)
            raise StoreUnavailable(f"the restored frames of chunk {i} are gone from Redis")
        return data

    def _work(self, board: ChunkBoard, i: int, frames: Sequence[np.ndarray], restorer: FrameRestorer,
              worker: str, check: Check, progress: Callable[[float, int], None] | None = None) -> None:
        """Restore chunk ``i`` under its lease, renewing it at each tile; store the frames."""
        last = [time.monotonic()]

        def tick(done: int, total: int, frame: int = 0) -> None:
            if time.monotonic() - last[0] > self.lease_s / 5:
                last[0] = time.monotonic()
                board.renew(i)
                check()
            if progress is not None:
                progress(frame + done / max(total, 1), len(frames))

        restorer.reports = []
        try:
            out = []
            for k, f in enumerate(frames):
                def step(d: int, t: int, k: int = k) -> None:
                    tick(d, t, k)

                out.append(restorer(f, step))
        except BaseException:
            board.release(i)  # someone else may take it at once
            raise
        board.finish(i, worker, pack(out), restorer.reports)

    def take(self, ref: ChunkRef, worker: str,
             restorer_for: Callable[[JobRecord, Strength | None], FrameRestorer]) -> str:
        """A chunk message: run the chunk if its run is still on and nobody has it; what happened."""
        def check() -> None:
            rec = self.store.get(ref.job)
            if rec is None or rec.status != JobStatus.running or rec.attempt != ref.attempt:
                raise ChunkAbandoned(str(ref))

        try:
            check()
        except ChunkAbandoned:
            return "abandoned"
        board = self.board(ref)
        plan = board.plan()
        data = board.input(ref.index)
        if plan is None or data is None or not board.claim(ref.index, worker):
            return "taken"
        run = self.store.get(ref.job)
        if run is None:
            board.release(ref.index)
            return "abandoned"
        try:
            self._work(board, ref.index, unpack(data), restorer_for(run, plan["strength"]), worker, check)
        except ChunkAbandoned:
            return "abandoned"
        return "done"
