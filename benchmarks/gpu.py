"""The engine on a GPU vs the paper-style float simulation on the same GPU and weights.

``python -m benchmarks.gpu`` (or the ``gpu`` section of ``make bench``). Per network, identical
random weights: the paper-style simulation (``benchmarks.paper_reference``, run with PyTorch's
default settings, as the released code would be), and the engine with each GPU backend (float,
fp16, fused Triton units). Outputs are 1920x1080 for denoise and deblock and 1920x1080 from
480x270 for x4 SR. Each time is the median of ``--repeats`` runs after one warm-up, synchronized
with the device before and after. The diff columns are the largest absolute difference of each
backend's output from the float engine on the same device (outputs in 0..1).

``--device cpu --scale 0.1`` runs the same code on the CPU at a tenth of the size, to check it
where no GPU exists (the GPU-only backends are then reported as unavailable).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.paper_reference import paper_network
from models.config import NetworkConfig, deblock_config, denoise_config, sr_config
from models.engine import from_network, resolve_backend
from models.testing import random_net

GPU_BACKENDS = ("float", "fp16", "fused")
# (label, config, input height, input width): 1920x1080 outputs
CASES: list[tuple[str, NetworkConfig, int, int]] = [
    ("denoise", denoise_config(), 1080, 1920),
    ("deblock", deblock_config(), 1080, 1920),
    ("BBCU-L x4", sr_config(4, "l"), 270, 480),
    ("BBCU-M x4", sr_config(4, "m"), 270, 480),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: compilation, cuDNN algorithm choice, allocator
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _paper_ms(net: torch.nn.Module, x: torch.Tensor, device: torch.device, repeats: int) -> float:
    paper = paper_network(net).to(device)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return paper(x)  # type: ignore[no-any-return]

    return _median_ms(run, device, repeats)


def _row(label: str, cfg: NetworkConfig, h: int, w: int, device: torch.device, repeats: int,
         backends: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    net = random_net(cfg)
    x = torch.rand(1, cfg.in_nc, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    times = {"paper": _paper_ms(net, x, device, repeats)}
    outs: dict[str, torch.Tensor] = {}
    for b in backends:
        model = from_network(net, cfg, device=device, backend=b)
        times[b] = _median_ms(lambda m=model: m(x), device, repeats)  # type: ignore[misc]
        outs[b] = model(x)
        del model
    diffs = {b: float((o - outs["float"]).abs().max()) for b, o in outs.items()}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times, diffs


def available_backends(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """The backends that run on ``device``, and why the others do not."""
    ok, missing = [], {}
    for b in GPU_BACKENDS:
        try:
            resolve_backend(b, device)
            ok.append(b)
        except ValueError as e:
            missing[b] = str(e)
    return ok, missing


def table(device: torch.device, repeats: int = 3, scale: float = 1.0, cases: list[str] | None = None,
          emit: Callable[[str], None] = lambda line: None) -> str:
    """The markdown table; ``emit`` gets each line as soon as it is known (a run cut short keeps them)."""
    backends, missing = available_backends(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    notes = [f"{name}, torch {torch.__version__}, median of {repeats} synchronized runs after a "
             "warm-up; identical random weights; paper sim with PyTorch's default settings (TF32 "
             "allowed for its cuDNN convolutions), the engine in full fp32 for its float convolutions."]
    notes += [f"{b}: not run ({why})" for b, why in missing.items()]
    head = (["network (input -> output)", "paper sim ms"] + [f"{b} ms" for b in backends]
            + [f"{b} vs paper" for b in backends] + [f"max diff {b} vs float" for b in backends
                                                    if b != "float"])
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for line in [*notes, "", *rows]:
        emit(line)
    for label, cfg, h, w in CASES:
        if cases and label not in cases:
            continue
        h, w = max(8, int(h * scale)), max(8, int(w * scale))
        t, d = _row(label, cfg, h, w, device, repeats, backends)
        io = f"{w}x{h} -> {w * cfg.scale}x{h * cfg.scale}"
        cells = [f"{label} ({io})", f"{t['paper']:.1f}"] + [f"{t[b]:.1f}" for b in backends]
        cells += [f"**{t['paper'] / t[b]:.1f}x**" for b in backends]
        cells += [f"{d[b]:.1e}" for b in backends if b != "float"]
        rows.append("| " + " | ".join(cells) + " |")
        emit(rows[-1])
    return "\n".join(notes + ["", *rows, ""])


def profile(device: torch.device, backend: str, label: str = "denoise", scale: float = 1.0,
            top: int = 12) -> str:
    """Where one forward's device time goes: the ``top`` kernels by total time, as a markdown table."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    label_, cfg, h, w = next(c for c in CASES if c[0] == label)
    h, w = max(8, int(h * scale)), max(8, int(w * scale))
    model = from_network(random_net(cfg), cfg, device=device, backend=backend)
    x = torch.rand(1, cfg.in_nc, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    model(x)  # warm-up: compilation, algorithm choice
    _sync(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with torch_profile(activities=activities) as prof:
        model(x)
        _sync(device)
    events = prof.key_averages()
    attr = "self_cpu_time_total"
    if cuda:  # renamed in PyTorch 2.4
        attr = "device_time_total" if hasattr(events[0], "device_time_total") else "cuda_time_total"
    events = sorted((e for e in events if getattr(e, attr, 0) > 0), key=lambda e: -getattr(e, attr))
    total = sum(getattr(e, attr) for e in events) or 1.0
    rows = [f"{label_} {w}x{h}, backend {backend}: {total / 1e3:.1f} ms of "
            f"{'device' if cuda else 'CPU self'} time in one forward", "",
            "| kernel | calls | ms | share |", "|---|---:|---:|---:|"]
    for e in events[:top]:
        t = getattr(e, attr)
        rows.append(f"| `{e.key[:70]}` | {e.count} | {t / 1e3:.2f} | {100 * t / total:.0f}% |")
    return "\n".join(rows) + "\n"


def run() -> str:
    """The ``make bench`` section: the table on the first CUDA device, or why it did not run."""
    if not torch.cuda.is_available():
        return "not run: no CUDA device\n"
    return table(torch.device("cuda"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the benchmark sizes")
    parser.add_argument("--case", action="append", help="only these networks (by label)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--profile", metavar="BACKEND",
                        help="instead of the table: where one denoise forward of BACKEND spends its time")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    if args.profile:
        text = profile(device, args.profile, scale=args.scale)
        print(text)
        if args.out:
            args.out.write_text(text)
        return 0
    if args.out:
        args.out.write_text("")

    def emit(line: str) -> None:
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(line + "\n")

    table(device, args.repeats, args.scale, args.case, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
