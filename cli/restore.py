"""``bbcu restore``: restore image files or folders with shipped or given BBCU networks.

Inputs are never overwritten, and existing outputs only with ``--overwrite``; every destination is
checked before the first image is restored.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cli.common import describe_stage, fail
from models.vocab import BACKENDS, DEFAULT_SR_SCALE, FORMATS, PRECISIONS, SR_SCALES, VARIANTS, format_of

# what a folder is searched for (the decoder reads more; these are the usual photo and video files)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif",
                  ".avif", *VIDEO_SUFFIXES)


class UsageError(Exception):
    """Arguments that cannot be carried out; the message says why."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore image files",
                       description="Restore images, animations (GIF, APNG, WebP) and videos (MP4, WebM, "
                                   "MOV): super-resolution, color denoising, JPEG deblocking, or a "
                                   "pipeline of them (e.g. --task deblock,sr).")
    p.add_argument("inputs", nargs="+", metavar="IN", help="input image or video files or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one input file) or folder")
    p.add_argument("--task", required=True, metavar="TASK",
                   help="sr, denoise or deblock, or a pipeline run in order: deblock,sr or denoise,sr")
    p.add_argument("--scale", type=int, help=f"sr only: {', '.join(map(str, SR_SCALES))} "
                                             f"(default {DEFAULT_SR_SCALE})")
    p.add_argument("--variant", choices=VARIANTS, help="network variant of the shipped weights")
    p.add_argument("--weights", metavar="PATH", help="a checkpoint (official format or ours); one task only")
    p.add_argument("--strength", default=None, metavar="S",
                   help="denoise only: auto (default: from the estimated noise) or 0..1 (0 keeps the input)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="float layers' arithmetic on the CPU: fp32 (exact reference) or bf16 (faster, "
                        "opt-in; docs/engine.md gives its PSNR change)")
    p.add_argument("--tile", type=int, metavar="N", help="tile size in input pixels (seam-free)")
    p.add_argument("--format", choices=FORMATS, help="output format (default: from OUT or png)")
    p.add_argument("--quality", type=int, metavar="Q", help="jpeg/webp quality 1..100 (default 95)")
    p.add_argument("--max-pixels", type=int, default=100_000_000, help="refuse larger inputs (per frame)")
    p.add_argument("--max-frames", type=int, default=100_000,
                   help="refuse animations and videos of more frames")
    p.add_argument("--recursive", action="store_true", help="also restore images in subfolders")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never inputs)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--url", metavar="URL",
                   help="restore on a running service (e.g. http://host:8000) instead of in this process")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get("BBCU_API_KEY"),
                   help="with --url: the service's API key (default: $BBCU_API_KEY)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N",
                   help="with --url: images in flight at once (default 4)")
    p.set_defaults(handler=run)


def collect(paths: list[Path], recursive: bool) -> list[tuple[Path, Path]]:
    """(file, path relative to the output folder) for every input file and image in input folders."""
    found: list[tuple[Path, Path]] = []
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    for p in paths:
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(f for f in p.glob(pattern) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            found += [(f, f.relative_to(p)) for f in files]
        else:
            found.append((p, Path(p.name)))
    if not found:
        raise UsageError(f"no images in {', '.join(map(str, paths))}"
                         + ("" if recursive else " (--recursive searches subfolders)"))
    return found


def destinations(inputs: list[Path], sources: list[tuple[Path, Path]], output: Path, fmt: str | None,
                 overwrite: bool) -> list[Path]:
    """Where each source goes; a UsageError before anything is written if any would be lost."""
    one_file = len(inputs) == 1 and inputs[0].is_file()
    names_a_file = bool(output.suffix) and output.suffix.lower() in IMAGE_SUFFIXES and not output.is_dir()
    if names_a_file and not one_file:
        raise UsageError(f"{output} names a file but there are {len(sources)} inputs; give a folder")
    if names_a_file:
        if format_of(output.suffix) is None:
            raise UsageError(f"cannot write {output.suffix} files; write {', '.join(FORMATS)} "
                             "(or give a folder)")
        dests = [output]
    else:
        if output.is_file():
            raise UsageError(f"{output} is a file; the output of {len(sources)} input(s) must be a folder")
        # a video keeps its container; an image (an animation too) becomes png unless told
        dests = [output / rel.with_suffix(f".{fmt}" if fmt else rel.suffix.lower()
                                          if rel.suffix.lower() in VIDEO_SUFFIXES else ".png")
                 for _, rel in sources]
    seen: dict[Path, Path] = {}
    inputs_resolved = {src.resolve(): src for src, _ in sources}
    for (src, _), dst in zip(sources, dests, strict=True):
        key = dst.resolve()
        if key in inputs_resolved:
            raise UsageError(f"{dst} is an input ({inputs_resolved[key]}): inputs are never overwritten; "
                             "choose another output folder or --format")
        if key in seen:
            raise UsageError(f"{seen[key]} and {src} would both be written to {dst}")
        seen[key] = src
    existing = [str(d) for d in dests if d.exists()]
    if existing and not overwrite:
        raise UsageError(f"output exists: {', '.join(existing[:5])}"
                         + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
                         + " (--overwrite replaces it)")
    return dests


def _check_args(args: argparse.Namespace) -> tuple[tuple[str, ...], object]:
    from models.errors import OptionError
    from models.stages import check_options, parse_pipeline, parse_strength

    try:
        tasks = parse_pipeline(args.task)
        strength = parse_strength(args.strength)
        check_options(tasks, args.scale, strength)
    except OptionError as e:
        raise UsageError(str(e)) from e
    if args.tile is not None and args.tile < 16:
        raise UsageError(f"--tile must be at least 16 pixels, got {args.tile}")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be from 1 to 100, got {args.quality}")
    if args.weights and len(tasks) > 1:
        raise UsageError("--weights names one network; a pipeline uses the shipped weights")
    return tasks, strength


def _describe(reports: list) -> str:
    return "; ".join(describe_stage(r.task, r.inference_ms, r.sigma, r.strength, r.chroma_model,
                                    r.jpeg_quality) for r in reports)


def run(args: argparse.Namespace) -> int:
    try:
        tasks, strength = _check_args(args)
        inputs = [Path(p) for p in args.inputs]
        sources = collect(inputs, args.recursive)
        dests = destinations(inputs, sources, Path(args.output), args.format, args.overwrite)
    except UsageError as e:
        return fail(str(e))
    if args.url:
        from cli.remote import restore_remote

        return restore_remote(args, [(src, dst) for (src, _), dst in zip(sources, dests, strict=True)])
    return _restore_here(args, tasks, strength, sources, dests)


def _restore_here(args: argparse.Namespace, tasks: tuple[str, ...], strength: object,
                  sources: list[tuple[Path, Path]], dests: list[Path]) -> int:
    from models import imageio, media
    from models.engine import load_chroma_partner, load_for_task
    from models.errors import BBCUError
    from models.media.restore import FrameRestorer
    from models.media.restore import restore as restore_frames
    from models.pipeline import run_stages

    try:
        models = [load_for_task(t, args.scale if t == "sr" else None, args.variant, args.weights,
                                device=args.device, backend=args.backend, precision=args.precision)
                  for t in tasks]
        chroma = (load_chroma_partner("deblock", args.variant, args.weights, device=args.device,
                                      backend=args.backend, precision=args.precision)
                  if "deblock" in tasks else None)
    except (BBCUError, ValueError) as e:
        return fail(str(e))
    bars = not args.quiet and sys.stderr.isatty()
    failures = 0
    for n, ((src, _), dst) in enumerate(zip(sources, dests, strict=True), 1):
        progress = None
        if bars:
            from tqdm import tqdm

            bar = tqdm(desc=f"[{n}/{len(sources)}] {src.name}", total=1000, leave=False)

            def progress(done: float, total: int, bar: tqdm = bar) -> None:
                bar.update(done * 1000 // max(total, 1) - bar.n)

        t0 = time.perf_counter()
        try:
            data = src.read_bytes()
            kind = media.probe(data, max_pixels=args.max_pixels, max_frames=args.max_frames)
            fmt = media.output_format(kind, args.format or format_of(dst.suffix))
            if kind.kind == "still":
                img = imageio.decode(data, max_pixels=args.max_pixels)
                out, reports = run_stages(models, img, tile=args.tile, strength=strength,  # type: ignore[arg-type]
                                          progress=progress, chroma=chroma)
                result = imageio.encode(out, fmt, quality=args.quality)
            else:
                restorer = FrameRestorer(models, tile=args.tile, strength=strength, chroma=chroma)  # type: ignore[arg-type]
                result = restore_frames(restorer, data, kind, fmt, quality=args.quality,
                                        max_frames=args.max_frames, progress=progress)
                reports = restorer.reports
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(result)
        except (BBCUError, OSError) as e:
            failures += 1
            print(f"bbcu: {src}: {e}", file=sys.stderr)
            continue
        finally:
            if bars:
                bar.close()
        if not args.quiet:
            print(f"{src} -> {dst} ({time.perf_counter() - t0:.1f} s: {_describe(reports)})",
                  file=sys.stderr, flush=True)
    if failures:
        return fail(f"{failures} of {len(sources)} files failed", code=1)
    return 0
