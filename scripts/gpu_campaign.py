"""One short GPU training campaign: every shipped network trained side by side on one GPU.

A GPU machine is lent for minutes, not days, so the campaign is planned in wall-clock phases rather
than iterations. The networks are small enough that one GPU runs them all at once (each process is
bounded by its own data pipeline and kernel launches, not by the GPU). Phases:

- A (0 .. ``--sr2``): SR x2 BBCU-L and BBCU-M at lr 5e-4, starting from the shipped x2 weights (BBCU-M
  takes the body of the L network); the denoiser and both deblockers start too;
- B: x3/x4 (L and M) start from the phase-A x2 weights; x2 continues at lr 1e-4;
- the lr of every run drops to 1e-4 for its last part (``--final``).

``--continue`` plans a later session instead: every run resumes training from its own shipped file
(x3/x4 included), at a lower lr (``--lr``, then ``--final-lr``), with no phase dependencies; ``--only``
picks the runs that get the GPU (fewer runs, more iterations each).

The last weights of every run and the logs are packed into tars under ``<out>`` (sr-x2.tar, ...).
Usage: python3 scripts/gpu_campaign.py --data corpus.tar --minutes 7 --out "$OUT"
       python3 scripts/gpu_campaign.py --continue --only sr-x4-l,denoise,deblock --data ... --out ...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DEVICE = os.environ.get("BBCU_CAMPAIGN_DEVICE", "cuda")  # cpu: a dry run of the plan
EXTRA = os.environ.get("BBCU_CAMPAIGN_ARGS", "").split()  # e.g. "--batch 2 --patch 48" for a dry run


@dataclass
class Run:
    name: str
    args: list[str]
    init: str | None
    start: float  # minutes after the campaign starts
    end: float
    lr: float = 5e-4
    final_lr: float = 1e-4
    final: float = 0.3  # fraction of the run at final_lr
    proc: subprocess.Popen[bytes] | None = None
    phase: int = 0
    log: list[Path] = field(default_factory=list)


def plan(total: float, sr2: float, shipped: Path) -> list[Run]:
    x2 = str(shipped / "bbcu-sr-x2.safetensors")
    runs = [
        Run("sr-x2-l", ["--task", "sr", "--scale", "2", "--variant", "l"], x2, 0, total, final=0.45),
        Run("sr-x2-m", ["--task", "sr", "--scale", "2", "--variant", "m"], x2, 0, total, final=0.45),
        Run("denoise", ["--task", "denoise"], str(shipped / "bbcu-denoise.safetensors"), 0, total),
        Run("deblock", ["--task", "deblock"], str(shipped / "bbcu-deblock.safetensors"), 0, total),
        Run("deblock-color", ["--task", "deblock", "--channels", "3", "--quality", "10,50"],
            str(shipped / "bbcu-deblock.safetensors"), 0, total),
    ]
    for scale in (3, 4):
        for v in ("l", "m"):
            # the HR patch must be a multiple of the scale: 132 for x3 (the paper's 128 otherwise)
            patch = ["--patch", "132"] if scale == 3 else []
            args = ["--task", "sr", "--scale", str(scale), "--variant", v, *patch]
            runs.append(Run(f"sr-x{scale}-{v}", args, f"@sr-x2-{v}", sr2, total))
    return runs


SHIPPED_FILES = {"sr-x2-l": "bbcu-sr-x2", "sr-x2-m": "bbcu-sr-x2-m", "sr-x3-l": "bbcu-sr-x3",
                 "sr-x3-m": "bbcu-sr-x3-m", "sr-x4-l": "bbcu-sr-x4", "sr-x4-m": "bbcu-sr-x4-m",
                 "denoise": "bbcu-denoise", "deblock": "bbcu-deblock", "deblock-color": "bbcu-deblock-color"}


def plan_continue(total: float, shipped: Path, only: list[str], lr: float, final_lr: float) -> list[Run]:
    """Every chosen run from its own shipped weights, for the whole campaign (no phase waits for x2)."""
    runs = []
    for r in plan(total, 0.0, shipped):
        if only and r.name not in only:
            continue
        runs.append(Run(r.name, r.args, str(shipped / f"{SHIPPED_FILES[r.name]}.safetensors"), 0, total,
                        lr=lr, final_lr=final_lr))
    unknown = sorted(set(only) - set(SHIPPED_FILES))
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(SHIPPED_FILES)}")
    return runs


def launch(run: Run, data: list[str], work: Path, t0: float, lr: float, minutes: float,
           resume: bool) -> None:
    log = work / f"{run.name}.{run.phase}.log"
    run.log.append(log)
    init = run.init
    if init and init.startswith("@"):
        init = str(work / f"{init[1:]}.phase0.safetensors")
    cmd = [sys.executable, "-m", "cli.main", "train", *run.args, *EXTRA, "--data", *data,
           "--device", DEVICE, "--threads", "2", "--lr", str(lr), "--iters", "10000000",
           "--milestones", "9999999", "--max-minutes", f"{minutes:.3f}", "--val-every", "250",
           "--save-every", "250", "--shift-lr-mult", "2", "--no-progress",
           "--run-dir", str(work / run.name), "--out", str(work / f"{run.name}.phase{run.phase}.safetensors")]
    if resume:
        cmd.append("--resume")
    elif init:
        cmd += ["--init", init]
    print(f"[{(time.monotonic() - t0) / 60:5.2f} min] start {run.name} phase {run.phase}: lr {lr} "
          f"until {minutes:.2f} min of training", flush=True)
    run.proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--minutes", type=float, default=7.0, help="wall time of the whole campaign")
    ap.add_argument("--sr2", type=float, default=0.42, help="fraction of it before x3/x4 start")
    ap.add_argument("--startup", type=float, default=0.35, help="minutes a process needs to start")
    ap.add_argument("--grace", type=float, default=0.6, help="minutes allowed past the end before stopping")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shipped", type=Path, default=Path("models/weights"),
                    help="the weights the runs start from")
    ap.add_argument("--work", type=Path, default=Path("runs/campaign"))
    ap.add_argument("--continue", dest="cont", action="store_true",
                    help="resume every run from its own shipped weights (a later session)")
    ap.add_argument("--only", default="", help="with --continue: comma list of runs, e.g. sr-x4-l,denoise")
    ap.add_argument("--lr", type=float, default=2e-4, help="with --continue: the lr of the first part")
    ap.add_argument("--final-lr", type=float, default=5e-5, help="with --continue: the lr of the last part")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.cont:
        runs = plan_continue(a.minutes, a.shipped, [n for n in a.only.split(",") if n], a.lr, a.final_lr)
    else:
        runs = plan(a.minutes, a.minutes * a.sr2, a.shipped)
    # a time limit around the campaign sends SIGTERM: still stop the runs and pack what exists
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    t0 = time.monotonic()
    # phase 0 of the x2 runs ends when x3/x4 start (they need its weights); every run then switches
    # to the final lr for its last part.
    pending = list(runs)
    try:
        while True:
            now = (time.monotonic() - t0) / 60
            for r in list(pending):
                waits_for = (a.work / f"{r.init[1:]}.phase0.safetensors"
                             if r.init and r.init.startswith("@") else None)
                if r.proc is None and now >= r.start and (waits_for is None or waits_for.exists()):
                    span = r.end - max(r.start, now)
                    if r.name.startswith("sr-x2") and not a.cont:
                        first = a.minutes * a.sr2 - now - a.startup
                    else:
                        first = span * (1 - r.final) - a.startup
                    launch(r, a.data, a.work, t0, r.lr, max(first, 0.2), resume=False)
                elif r.proc is not None and r.proc.poll() is not None:
                    code = r.proc.returncode
                    if code != 0 or r.phase == 1:
                        print(f"[{now:5.2f} min] {r.name} phase {r.phase} ended with {code}", flush=True)
                        pending.remove(r)
                        continue
                    r.phase = 1
                    remaining = a.minutes - now - a.startup
                    # --max-minutes counts the training time of all phases of a run together
                    done = float(_elapsed(a.work / r.name))
                    launch(r, a.data, a.work, t0, r.final_lr, done + max(remaining, 0.1), resume=True)
            if not pending:
                break
            if now > a.minutes + a.grace:
                print(f"[{now:5.2f} min] past the campaign's end: stopping "
                      + ", ".join(r.name for r in pending), flush=True)
                break
            time.sleep(2)
    finally:
        for r in runs:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.terminate()
        pack(a.work, a.out)
    print(f"campaign done in {(time.monotonic() - t0) / 60:.2f} min", flush=True)
    return 0


def pack(work: Path, out: Path) -> None:
    """The last weights of every run and all logs, in tars of at most ~16 MB (one per group)."""
    groups: dict[str, list[Path]] = {"logs": sorted(work.glob("*.log"))}
    for name in sorted({p.name.split(".phase")[0] for p in work.glob("*.phase*.safetensors")}):
        last = sorted(work.glob(f"{name}.phase*.safetensors"))[-1]
        group = name.rsplit("-", 1)[0] if name.startswith("sr-") else "dncnn"
        groups.setdefault(group, []).append(last)
    for group, files in groups.items():
        with tarfile.open(out / f"{group}.tar", "w") as tar:
            for p in files:
                tar.add(p, arcname=p.name)


def _elapsed(run_dir: Path) -> float:
    import torch

    state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=True)
    return float(state["elapsed"]) / 60


if __name__ == "__main__":
    sys.exit(main())
