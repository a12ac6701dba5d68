"""A clip over one worker and over two (issue 22): the time of a 48-frame 160x120 sr x2 job, and how
fast a clip too large to run is refused.

Real processes (redis-server, `bbcu serve`, `bbcu worker --pool solo`, one torch thread each) and the
shipped weights; the clip (H.264 + AAC) is made here. Each setting runs ``--rounds`` times, one worker
and two alternating; the table shows every run's wall time (the job record's start to finish) and the
ratio of the medians.

    python -m benchmarks.media_spread [--frames 48] [--rounds 2] [--chunk 4]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.harness import bbcu, wait_until
from benchmarks.load import cluster
from models.catalog import WEIGHTS_DIR
from tests import media_files


def _run(url: str, clip: bytes) -> tuple[float, dict[str, int]]:
    with httpx.Client(base_url=url, timeout=600) as c:
        job = c.post("/restore", params={"task": "sr", "scale": "2", "async": "true"},
                     files={"image": ("clip.mp4", clip, "video/mp4")}).json()
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.2)
            job = c.get(f"/jobs/{job['id']}").json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"the job ended {job['status']}: {job.get('error')}")
    return job["finished_at"] - job["started_at"], job.get("frames_by_worker") or {}


def _refusal(url: str) -> tuple[int, float, str]:
    """1200 frames of 640x480 at x4: the status, the seconds to the answer and its detail."""
    big = media_files.video(n=1200, w=640, h=480, fps=24, audio=False, solid=True)
    t0 = time.perf_counter()
    r = httpx.post(url + "/restore", params={"task": "sr", "scale": "4"}, timeout=60,
                   files={"image": ("long.mp4", big, "video/mp4")})
    return r.status_code, time.perf_counter() - t0, r.json().get("detail", "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--chunk", type=int, default=4, help="BBCU_CHUNK_FRAMES")
    args = p.parse_args(argv)
    clip = media_files.video(n=args.frames, w=160, h=120, fps=12)
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="bbcu-media-") as tmp, \
            cluster(WEIGHTS_DIR, Path(tmp) / "logs", env={"BBCU_CHUNK_FRAMES": str(args.chunk)}) as c:
        status, seconds, detail = _refusal(c.url)
        print(f"1200 frames of 640x480 at x4: {status} in {seconds:.2f} s ({detail})", flush=True)
        argv_of = bbcu("worker", "--queues", "cpu", "--pool", "solo", "--log-level", "warning")
        workers = [c._spawn(f"worker-{i}", [*argv_of, "--hostname", f"w{i}@%h"], c.env) for i in (1, 2)]

        def ready(n: int) -> bool:
            return int(httpx.get(c.url + "/readyz", timeout=2).json().get("workers", {}).get("cpu", 0)) == n

        wait_until(lambda: ready(2), 180, workers[0], "two workers")
        _run(c.url, media_files.video(n=2 * args.chunk + 1, w=32, h=24, fps=12))  # models loaded in both
        second = workers[1].popen
        for r in range(args.rounds):
            for n in (2, 1) if r % 2 else (1, 2):
                if n == 1 and second.poll() is None:
                    second.send_signal(signal.SIGSTOP)  # the second worker takes nothing (its beat lapses)
                    wait_until(lambda: ready(1), 60, None, "one worker")
                elif n == 2 and second.poll() is None:
                    second.send_signal(signal.SIGCONT)
                    wait_until(lambda: ready(2), 60, None, "two workers")
                wall, by_worker = _run(c.url, clip)
                times[n].append(wall)
                print(f"round {r + 1}, {n} worker(s): {wall:.1f} s, frames by worker {by_worker}", flush=True)
        second.send_signal(signal.SIGCONT)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"{args.frames}-frame 160x120 sr x2, chunks of {args.chunk}: one worker {one:.1f} s, two workers "
          f"{two:.1f} s (medians of {args.rounds}); two / one = {two / one:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
