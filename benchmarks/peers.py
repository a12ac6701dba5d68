"""``make bench peers``: our networks against the float networks a user would run instead (issue 18).

``python -m benchmarks.peers [--repeats N] [--sr-size WxH] [--size WxH] [--rows ...] [--out FILE]``
prints a markdown table of quality against milliseconds; ``make bench peers`` runs it with the
defaults (``BENCH_REPEATS`` sets the repeats there).

- Ours run exactly as the service runs them: the shipped weights through ``load_for_task`` and
  ``pipeline.run_stages`` with the service's defaults (backend ``auto``, the default tile budget,
  auto strength for denoise: its input carries sigma 25 noise so the whole network runs; the deblock
  input is the photo saved as a 4:2:0 JPEG and decoded like an upload, and its chroma comes from
  the color deblocker at the resolution the file's quality picks, models.chroma).
- The peers (``benchmarks.peer_nets``) have random weights (the time does not depend on them) and
  run both in torch (channels_last, which is faster for every peer here) and in onnxruntime (the
  same network exported to ONNX); the faster of the two counts.
- 2 threads for everything; every contender runs once per round, rounds repeated; medians. The
  CPU-seconds ratio is the same comparison on this process's CPU time, which other processes on a
  shared machine do not inflate.

Quality: ours as measured on this repository's benchmarks (the catalogue's eval records, README
"Results"); the peers' as published, the paper named in the notes under the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.peer_nets import IMDN, DnCNN, EDSRBaseline, FFDNet
from benchmarks.tiles import photo
from benchmarks.timing import Timing, cpu_model, interleaved
from cli.catalog import db
from models import catalog, imageio
from models.degrade import jpeg_bytes, to_uint8
from models.engine import load_chroma_partner, load_for_task
from models.imageio import Image
from models.pipeline import run_stages

THREADS = 2
SR_SIZE = (320, 240)  # width x height of the super-resolution input
SIZE = (1920, 1080)  # width x height of the denoise and deblock input
REPEATS = 5
DENOISE_SIGMA = 25 / 255  # the noise on the denoise input (and the peers' published setting)
RUNTIMES = ("onnxruntime", "torch")

Size = tuple[int, int]


@dataclass(frozen=True)
class Peer:
    """A float network a user would run instead, with its published quality."""

    name: str
    build: Callable[[], nn.Module]
    sr: bool  # takes the super-resolution input (else the large same-size one)
    quality: str
    source: str


@dataclass(frozen=True)
class Ours:
    """One of our shipped networks as the service picks it, with the eval record to quote."""

    name: str
    task: str
    scale: int | None
    variant: str | None
    eval_key: str  # the catalogue eval record holding its measured PSNR
    quality_label: str
    jpeg_quality: int | None = None  # the input is the photo as a 4:2:0 JPEG of this quality
    network: str | None = None  # the catalogue network whose record to quote (default: the task's)


@dataclass(frozen=True)
class Row:
    key: str
    task: str
    ours: str
    peer: str
    note: str = ""


PEERS = {
    "IMDN": Peer("IMDN x4", lambda: IMDN(scale=4), True, "Set5 x4 32.21",
                 "Hui et al., Lightweight Image Super-Resolution with Information Multi-distillation "
                 "Network, ACM MM 2019"),
    "EDSR": Peer("EDSR-baseline x4", lambda: EDSRBaseline(scale=4), True, "Set5 x4 32.09",
                 "Lim et al., Enhanced Deep Residual Networks for Single Image Super-Resolution, "
                 "CVPR workshops 2017 (the baseline model)"),
    "FFDNet": Peer("FFDNet (color)", FFDNet, False, "CBSD68 s25 31.21",
                   "Zhang et al., FFDNet: Toward a Fast and Flexible Solution for CNN based Image "
                   "Denoising, TIP 2018"),
    "DnCNN": Peer("DnCNN (color, 17 layers)", DnCNN, False, "CBSD68 s25 31.23",
                  "Zhang et al., Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for Image "
                  "Denoising, TIP 2017 (CDnCNN-B, which has 20 layers: the 17 timed here make the "
                  "peer faster, not slower)"),
}

OURS = {
    "BBCU-M": Ours("BBCU-M x4", "sr", 4, "m", "CSet5/x4", "CSet5 x4"),
    "BBCU-L": Ours("BBCU-L x4", "sr", 4, "l", "CSet5/x4", "CSet5 x4"),
    "denoise": Ours("bbcu-denoise", "denoise", None, None, "CBSD68/sigma25", "CBSD68 s25"),
    "deblock": Ours("bbcu-deblock, color JPEG q10 (+ chroma net at 1/4)", "deblock", None, None,
                    "BSD68/q10", "BSD68 q10 (Y)", jpeg_quality=10),
    "deblock-q30": Ours("bbcu-deblock, color JPEG q30 (+ chroma net at 1/2)", "deblock", None, None,
                        "BSD68/q10", "BSD68 q10 (Y)", jpeg_quality=30),
    "deblock-q75": Ours("bbcu-deblock-color alone, color JPEG q75", "deblock", None, None,
                        "CBSD68/q10", "CBSD68 q10 (RGB)", jpeg_quality=75, network="bbcu-deblock-color"),
}

ROWS = (
    Row("bbcu-m", "SR x4", "BBCU-M", "IMDN"),
    Row("bbcu-l", "SR x4", "BBCU-L", "EDSR"),
    Row("denoise-ffdnet", "denoise", "denoise", "FFDNet"),
    Row("denoise-dncnn", "denoise", "denoise", "DnCNN"),
    Row("deblock", "deblock", "deblock", "FFDNet",
        "speed only: no float peer is named for JPEG deblocking; FFDNet does the same-size color work"),
    Row("deblock-q30", "deblock", "deblock-q30", "FFDNet"),
    Row("deblock-q75", "deblock", "deblock-q75", "FFDNet"),
)


def _onnx_runner(net: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # the TorchScript exporter (deprecated, still shipped): the dynamo one needs onnxscript too
        warnings.simplefilter("ignore")
        path = Path(tmp) / "peer.onnx"
        torch.onnx.export(net, (x,), path, dynamo=False, input_names=["x"], output_names=["y"])
        model = path.read_bytes()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # idle worker threads must not spin on the cores the next contender runs on
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


def _torch_runner(net: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = x.contiguous(memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return net(x)  # type: ignore[no-any-return]

    return run


def peer_runners(peer: Peer, size: Size, threads: int = THREADS) -> dict[str, Callable[[], object]]:
    """The peer on an input of ``size`` (width x height), per runtime."""
    torch.manual_seed(0)
    net = peer.build().eval()
    w, h = size
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    return {"onnxruntime": _onnx_runner(net, x, threads), "torch": _torch_runner(net, x)}


def _input(ours: Ours, size: Size) -> Image:
    pixels = photo(*size)
    if ours.task == "denoise":
        rng = np.random.default_rng(2)
        pixels = np.clip(pixels + rng.normal(0, DENOISE_SIGMA, pixels.shape), 0, 1).astype(np.float32)
    if ours.jpeg_quality is not None:  # decoded as the service decodes an upload
        return imageio.decode(jpeg_bytes(to_uint8(pixels), ours.jpeg_quality), max_pixels=1 << 40)
    return Image(pixels=pixels)


def ours_runner(ours: Ours, size: Size) -> Callable[[], object]:
    """One of our networks on a color photo of ``size``, the way a service job runs it."""
    model = load_for_task(ours.task, ours.scale, ours.variant)
    chroma = load_chroma_partner(ours.task, ours.variant)
    img = _input(ours, size)
    _, (report,) = run_stages([model], img, chroma=chroma)
    if report.tiles == 0:
        raise RuntimeError(f"{ours.name}: the service skipped the network on this input")
    return lambda: run_stages([model], img, chroma=chroma)


def ours_quality(ours: Ours) -> str:
    """The measured PSNR the catalogue records for the network the service picks."""
    entry = (catalog.by_name(ours.network) if ours.network
             else catalog.find(ours.task, ours.scale, ours.variant))
    record = (entry.metadata.get("eval") or {}).get(ours.eval_key) or {}
    psnr = record.get("psnr")
    return f"{ours.quality_label} {db(psnr)}" if isinstance(psnr, (int, float)) else "not measured"


def _contenders(rows: list[Row], sr_size: Size, size: Size,
                threads: int) -> dict[str, Callable[[], object]]:
    fns: dict[str, Callable[[], object]] = {}
    for row in rows:
        ours, peer = OURS[row.ours], PEERS[row.peer]
        if row.ours not in fns:
            fns[row.ours] = ours_runner(ours, sr_size if ours.task == "sr" else size)
        if f"{row.peer}/{RUNTIMES[0]}" not in fns:  # FFDNet serves two rows
            for runtime, fn in peer_runners(peer, sr_size if peer.sr else size, threads).items():
                fns[f"{row.peer}/{runtime}"] = fn
    return fns


def measure(rows: list[Row], *, repeats: int = REPEATS, sr_size: Size = SR_SIZE, size: Size = SIZE,
            threads: int = THREADS, verbose: bool = False) -> dict[str, Timing]:
    """Median timings of every contender of ``rows``, interleaved run by run, on ``threads``."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fns = _contenders(rows, sr_size, size, threads)

        def progress(done: int) -> None:
            if verbose:
                print(f"peers: round {done}/{repeats} done", file=sys.stderr, flush=True)

        return interleaved(fns, repeats, on_repeat=progress)
    finally:
        torch.set_num_threads(before)


def _best(times: dict[str, Timing], peer: str) -> tuple[str, Timing]:
    runtime = min(RUNTIMES, key=lambda r: times[f"{peer}/{r}"].wall)
    return runtime, times[f"{peer}/{runtime}"]


def report(rows: list[Row], times: dict[str, Timing], *, repeats: int, sr_size: Size = SR_SIZE,
           size: Size = SIZE, threads: int = THREADS) -> str:
    """The markdown table: per row our network's quality and time, the peer's, and the ratio."""
    import onnxruntime as ort

    lines = [
        f"CPU: {cpu_model()}, {threads} threads; torch {torch.__version__}, onnxruntime {ort.__version__}; "
        f"median of {repeats} interleaved runs; SR input {sr_size[0]}x{sr_size[1]}, denoise and deblock "
        f"input {size[0]}x{size[1]}.",
        "",
        "| task (input) | ours | quality (measured) | ms | float peer | quality (published) "
        "| ms, best (onnxruntime / torch) | peer / ours | peer / ours, CPU s |",
        "|---|---|---|---:|---|---|---:|---:|---:|",
    ]
    notes: list[str] = []
    for row in rows:
        ours, peer = OURS[row.ours], PEERS[row.peer]
        w, h = sr_size if ours.task == "sr" else size
        mine = times[row.ours]
        _, best = _best(times, row.peer)
        per = " / ".join(f"{times[f'{row.peer}/{r}'].wall * 1e3:.0f}" for r in RUNTIMES)
        source = list(PEERS).index(row.peer) + 1
        quality = f"{peer.quality} [{source}]"
        if row.note:
            notes.append(f"- {row.task}, {peer.name}: {row.note}.")
            quality += " *"
        lines.append(
            f"| {row.task} ({w}x{h}) | {ours.name} | {ours_quality(ours)} | {mine.wall * 1e3:.0f} "
            f"| {peer.name} | {quality} | {best.wall * 1e3:.0f} ({per}) "
            f"| {best.wall / mine.wall:.2f}x | {best.cpu / mine.cpu:.2f}x |")
    lines += ["", *notes] if notes else []
    lines += ["", "Published quality (PSNR, dB):"]
    lines += [f"[{i}] {p.name}: {p.source}." for i, p in enumerate(PEERS.values(), 1)]
    return "\n".join(lines)


def run() -> str:
    """``make bench``'s section: every row, the default sizes, ``BENCH_REPEATS`` rounds."""
    repeats = int(os.environ.get("BENCH_REPEATS", REPEATS))
    rows = list(ROWS)
    return report(rows, measure(rows, repeats=repeats, verbose=True), repeats=repeats)


def _size(text: str) -> Size:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w < 8 or h < 8 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"{text}: width and height must be even and at least 8")
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="interleaved rounds (median)")
    parser.add_argument("--sr-size", type=_size, default=SR_SIZE, help="SR input, WxH (320x240)")
    parser.add_argument("--size", type=_size, default=SIZE, help="denoise/deblock input, WxH (1920x1080)")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--rows", nargs="+", choices=[r.key for r in ROWS], default=[r.key for r in ROWS])
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    rows = [r for r in ROWS if r.key in args.rows]
    times = measure(rows, repeats=args.repeats, sr_size=args.sr_size, size=args.size,
                    threads=args.threads, verbose=True)
    table = report(rows, times, repeats=args.repeats, sr_size=args.sr_size, size=args.size,
                   threads=args.threads)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
