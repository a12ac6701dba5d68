"""Bit-packed kernels vs float: one run, identical weights, markdown tables.

``python -m benchmarks.kernels`` (or ``run()`` from ``make bench``). Three paths per network:

- *paper*: the paper-style float simulation (``benchmarks.paper_reference``: a training-mode
  forward whose STEs are chains of masked elementwise ops, weights re-binarized on every call);
- *float*: our engine with ``backend='float'`` (exact float convolution of the signs);
- *bitpacked*: our engine with the XNOR/popcount kernels, with the best conv core this CPU has and
  with the AVX2 core forced.

Every timing is the median of ``BENCH_REPEATS`` (default 3) runs, the paths interleaved in each
repeat so that background load hits them alike; 2 threads everywhere. Cycles and the share of
the float peak use the clock the cores run at (``_running_clock_hz``: timed, not the nominal one of
/proc/cpuinfo, which a boosting core exceeds) and 32 fp32 FLOP/cycle/core (two 8-wide
FMA pipes), 2 cores; for binary convolutions one MAC counts as 2 FLOP ("float-equivalent").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.paper_reference import paper_network
from benchmarks.timing import cpu_model, median_interleaved
from models import kernels
from models.complexity import count
from models.config import NetworkConfig, deblock_config, denoise_config, sr_config
from models.engine import from_network
from models.testing import random_net

THREADS = 2
FLOP_PER_CYCLE_CORE = 32


def _clock_hz() -> float:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1]) * 1e6
    except OSError:
        pass
    return 2.6e9


def _running_clock_hz(nominal: float) -> float:
    """The clock a busy core runs at: BENCH_CLOCK_GHZ if set, else timed by the extension (a chain of
    dependent adds), else the nominal one (which understates a boosting core: this VM reports 2.6 GHz
    where the chain runs at 3.5-4.0)."""
    from models.kernels import _bitpacked as ext  # type: ignore[attr-defined]

    return float(os.environ.get("BENCH_CLOCK_GHZ", "0")) * 1e9 or float(ext.clock_hz()) or nominal


def _with_isa(isa: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run_it() -> object:
        before = kernels.isa()
        kernels.set_isa(isa)
        try:
            return fn()
        finally:
            kernels.set_isa(before)
    return run_it


def _layer_table(repeats: int, clock: float, isas: list[str], threads: int = THREADS) -> str:
    from models.kernels import _bitpacked as ext  # type: ignore[attr-defined]
    from models.kernels.bitpacked import as_array, pack_activations, pack_weights

    c, h, w = 64, 320, 480
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, c, h, w, generator=g)
    weight = torch.randn(c, c, 3, 3, generator=g)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_cl = weight.contiguous(memory_format=torch.channels_last)
    shift = torch.zeros(c)
    act = pack_activations(x, shift)
    wp, _ = pack_weights(torch.sign(weight))
    counts = torch.empty((1, h, w, c), dtype=torch.int32)
    resid = x_cl.clone()
    nact = torch.empty_like(act)
    p = torch.rand(c, generator=g)

    a_act, a_wp, a_p, a_shift = as_array(act), as_array(wp), as_array(p), as_array(shift)
    a_counts, a_resid, a_nact = as_array(counts), as_array(resid, nchw=False), as_array(nact)

    def core() -> None:
        ext.unit(a_act, a_wp, cin=c, cout=c, counts=a_counts, threads=threads)

    def unit() -> None:  # conv + scale, RPReLU, residual (in place) and the next unit's packing
        ext.unit(a_act, a_wp, cin=c, cout=c, alpha=a_p, pre=a_p, slope=a_p, post=a_p, residual=a_resid,
                 out=a_resid, next_shift=a_shift, next_act=a_nact, threads=threads)

    fns: dict[str, Callable[[], object]] = {
        "torch float conv2d (NCHW)": lambda: F.conv2d(x, weight, padding=1),
        "torch float conv2d (channels_last)": lambda: F.conv2d(x_cl, w_cl, padding=1),
    }
    for isa in isas:
        fns[f"binary conv, counts only ({isa})"] = _with_isa(isa, core)
        fns[f"binary unit, fused epilogue ({isa})"] = _with_isa(isa, unit)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            t = median_interleaved(fns, max(repeats, 5))
    finally:
        torch.set_num_threads(before)
    base = min(t["torch float conv2d (NCHW)"], t["torch float conv2d (channels_last)"])
    outputs = c * h * w
    flop = 2 * 9 * c * c * h * w
    peak = threads * FLOP_PER_CYCLE_CORE * clock
    label = f"layer (64->64, 3x3, 480x320), {threads} thread{'s' if threads > 1 else ''}"
    # the popcount bound: one 512-bit XOR+POPCNT+ADD (8 outputs x 64 channels of one tap) per cycle
    bound = outputs * 9 * ((c + 63) // 64) / 8 / (threads * clock)
    rows = [f"| {label} | ms | speedup vs best torch float | cycles / output "
            "| share of float peak | share of popcount bound |", "|---|---:|---:|---:|---:|---:|"]
    for k, v in t.items():
        rows.append(f"| {k} | {v * 1e3:.1f} | {base / v:.1f}x | {v * clock * threads / outputs:.1f} "
                    f"| {100 * flop / v / peak:.0f}% | {100 * bound / v:.0f}% |")
    return "\n".join(rows)


def unit_cpu_table(repeats: int, clock: float) -> str:
    """One thread, CPU time (what other processes on a shared machine disturb least): a 64->64 unit
    on a 256x64 image (every operand in cache) per conv core, alone and inside a chain of 8, as
    cycles per output pixel and share of the popcount bound (72 XOR+POPCNT+ADD of 512 bits a pixel
    at one a cycle); then the AVX-512 core's count loop alone, the ceiling its instruction mix leaves."""
    from models.kernels import _bitpacked as ext  # type: ignore[attr-defined]
    from models.kernels.bitpacked import as_array, pack_activations, pack_weights

    c, h, w, chain_len = 64, 64, 256, 8
    g = torch.Generator().manual_seed(1)
    units = []
    for _ in range(chain_len):
        wp, _ = pack_weights(torch.sign(torch.randn(c, c, 3, 3, generator=g)))
        units.append(tuple(as_array(t) for t in (wp, *(torch.rand(c, generator=g) * 0.1 for _ in range(5)))))
    x = torch.randn(1, h, w, c, generator=g)
    out = torch.empty_like(x)
    act = pack_activations(x.permute(0, 3, 1, 2), torch.zeros(c))
    nact = torch.empty_like(act)
    wp, al, pre, sl, po, sh = units[0]

    def unit() -> None:
        ext.unit(as_array(act), wp, cin=c, cout=c, alpha=al, pre=pre, slope=sl, post=po,
                 residual=as_array(x), out=as_array(out), next_shift=sh,
                 next_act=as_array(nact), threads=1)

    def chain() -> None:
        ext.chain(as_array(x), as_array(out), units, threads=1)

    rows = ["| conv core (1 thread, CPU time) | unit: cycles / px | share of popcount bound "
            "| in a chain of 8: cycles / px per unit | share |", "|---|---:|---:|---:|---:|"]
    before = kernels.isa()
    try:
        for isa in kernels.supported_isas()[1:]:
            kernels.set_isa(isa)
            best_u = best_c = float("inf")
            for _ in range(max(repeats, 5)):
                t = time.process_time()
                for _ in range(8):
                    unit()
                best_u = min(best_u, (time.process_time() - t) / 8)
                t = time.process_time()
                chain()
                best_c = min(best_c, (time.process_time() - t) / chain_len)
            cu, cc = best_u * clock / (h * w), best_c * clock / (h * w)
            rows.append(f"| {isa} | {cu:.0f} | {100 * 72 / cu:.0f}% | {cc:.0f} | {100 * 72 / cc:.0f}% |")
    finally:
        kernels.set_isa(before)
    loop = float(ext.count_loop_seconds()) * clock
    if loop > 0:
        rows.append(f"\nThe AVX-512 core's count loop alone (windows and weights in L1, no epilogue): "
                    f"{loop:.0f} cycles / px, {100 * 72 / loop:.0f}% of the popcount bound: the ceiling "
                    "of a fused unit of that core on this CPU.")
    return "\n".join(rows)


def _net_row(label: str, cfg: NetworkConfig, h: int, w: int, repeats: int, clock: float,
             isas: list[str]) -> str:
    net = random_net(cfg)
    paper = paper_network(net)
    fm = from_network(net, cfg, backend="float")
    bm = from_network(net, cfg, backend="bitpacked")
    x = torch.rand(1, cfg.in_nc, h, w, generator=torch.Generator().manual_seed(1))

    def run_paper() -> torch.Tensor:
        with torch.no_grad():
            return paper(x)  # type: ignore[no-any-return]

    fns: dict[str, Callable[[], object]] = {"paper": run_paper, "float": lambda: fm(x)}
    for isa in isas:
        fns[isa] = _with_isa(isa, lambda: bm(x))
    t = median_interleaved(fns, repeats)
    ref = fm(x)
    d_bit = (bm(x) - ref).abs().max().item()
    d_paper = (run_paper() - ref).abs().max().item()
    best = isas[0]
    out_px = h * w * cfg.scale ** 2
    cc = count(cfg, h, w)
    flop = 2 * (cc.flops + cc.bops)
    peak = THREADS * FLOP_PER_CYCLE_CORE * clock
    cells = [f"{label} ({w}x{h})", f"{t['paper']:.2f}", f"{t['float']:.2f}"]
    cells += [f"{t[i]:.3f}" for i in isas]
    cells += [f"**{t['paper'] / t[best]:.1f}x**", f"{t['float'] / t[best]:.1f}x"]
    cells += [f"{t['paper'] / t[i]:.1f}x" for i in isas[1:]]
    cells += [f"{t[best] * clock * THREADS / out_px:.0f}", f"{100 * flop / t[best] / peak:.0f}%",
              f"{d_bit:.1e}", f"{d_paper:.1e}"]
    return "| " + " | ".join(cells) + " |"


def _net_table(repeats: int, clock: float, isas: list[str]) -> str:
    cases = [
        ("denoise (color, 64 ch, 18 units)", denoise_config(), (320, 480)),
        ("deblock (gray, 64 ch, bias)", deblock_config(), (320, 480)),
        ("BBCU-M x4", sr_config(4, "m"), (180, 320)),
        ("BBCU-L x4", sr_config(4, "l"), (180, 320)),
    ]
    head = (["network (input)", "paper sim s", "float engine s"] + [f"bitpacked {i} s" for i in isas]
            + ["bitpacked vs paper", "vs float engine"] + [f"{i} vs paper" for i in isas[1:]]
            + ["cycles / output px", "share of float peak", "max abs diff bit vs float", "paper vs float"])
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, cfg, (h, w) in cases:
        rows.append(_net_row(label, cfg, h, w, repeats, clock, isas))
    return "\n".join(rows)


def run() -> str:
    """Run the kernel benchmarks and return a markdown report."""
    if not kernels.available():
        return f"## Bit-packed kernels\n\nnot available: {kernels.unavailable_reason()}\n"
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    clock = _running_clock_hz(_clock_hz())
    best = kernels.isa()
    # the best core, then the SIMD cores a CPU without its extra features would run
    isas = [best] + [i for i in reversed(kernels.supported_isas()) if i in ("avx512", "avx2") and i != best]
    try:
        layer = _layer_table(repeats, clock, isas)
        layer1 = _layer_table(repeats, clock, isas, threads=1)
        nets = _net_table(repeats, clock, isas)
        units = unit_cpu_table(repeats, clock)
    finally:
        torch.set_num_threads(threads_before)
    return "\n".join([
        "## Bit-packed kernels vs float (CPU)",
        "",
        f"{cpu_model()}, {THREADS} threads, torch {torch.__version__}, conv cores: {', '.join(isas)} "
        f"(best on this CPU: {best}). Median of {repeats} interleaved runs (layer: {max(repeats, 5)}). "
        f"Cycles at {clock / 1e9:.2f} GHz (the running clock, timed) x {THREADS} cores; "
        f"float peak = {THREADS} cores x "
        f"{FLOP_PER_CYCLE_CORE} FLOP/cycle x {clock / 1e9:.2f} GHz = "
        f"{THREADS * FLOP_PER_CYCLE_CORE * clock / 1e9:.0f} GFLOP/s; binary MACs count as 2 FLOP.",
        "",
        layer,
        "",
        "The same on one thread (less exposed to other processes on a shared 2-core machine):",
        "",
        layer1,
        "",
        "One unit and a chain of units on one thread, by CPU time:",
        "",
        units,
        "",
        "Whole networks (identical random weights; 'vs' columns are speedups of the bit-packed engine, "
        f"{best} core unless named; cycles and peak share for the {best} run):",
        "",
        nets,
        "",
    ])


if __name__ == "__main__":
    print(run())
