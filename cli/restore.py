"""``bbcu restore``: restore image files with a shipped or given BBCU network."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli.common import fail
from models.vocab import BACKENDS, DEFAULT_SR_SCALE, FORMATS, SR_SCALES, TASKS, VARIANTS, format_of


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("restore", help="restore image files",
                       description="Restore images: super-resolution, color denoising or JPEG deblocking.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="input image files")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one input) or directory")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--scale", type=int, choices=SR_SCALES, help=f"sr only (default {DEFAULT_SR_SCALE})")
    p.add_argument("--variant", choices=VARIANTS, help="network variant of the shipped weights")
    p.add_argument("--weights", metavar="PATH", help="a checkpoint (official format or ours)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--tile", type=int, metavar="N", help="tile size in input pixels (seam-free)")
    p.add_argument("--format", choices=FORMATS, help="output format (default: from OUT or png)")
    p.add_argument("--max-pixels", type=int, default=100_000_000, help="refuse larger inputs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--url", metavar="URL",
                   help="restore on a running service (e.g. http://host:8000) instead of in this process")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get("BBCU_API_KEY"),
                   help="with --url: the service's API key (default: $BBCU_API_KEY)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N",
                   help="with --url: images in flight at once (default 4)")
    p.set_defaults(handler=run)


def _destinations(inputs: list[Path], output: Path, fmt: str | None) -> list[Path]:
    single_file = len(inputs) == 1 and format_of(output.suffix) is not None
    if single_file:
        return [output]
    ext = fmt or "png"
    return [output / f"{p.stem}.{ext}" for p in inputs]


def run(args: argparse.Namespace) -> int:
    if args.tile is not None and args.tile < 16:
        return fail(f"--tile must be at least 16 pixels, got {args.tile}")
    if args.scale is not None and args.task != "sr":
        return fail("--scale applies to --task sr only")
    inputs = [Path(p) for p in args.inputs]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        return fail(f"no such file: {', '.join(missing)}")
    output = Path(args.output)
    dests = _destinations(inputs, output, args.format)
    if args.url:
        from cli.remote import restore_remote

        return restore_remote(args, list(zip(inputs, dests, strict=True)))
    return _restore_here(args, inputs, dests)


def _restore_here(args: argparse.Namespace, inputs: list[Path], dests: list[Path]) -> int:
    from tqdm import tqdm

    from models import imageio
    from models.engine import load_for_task
    from models.errors import BBCUError
    from models.pipeline import restore_image

    try:
        model = load_for_task(args.task, args.scale, args.variant, args.weights,
                              device=args.device, backend=args.backend)
    except (BBCUError, ValueError) as e:
        return fail(str(e))
    failures = 0
    files = tqdm(list(zip(inputs, dests, strict=True)), desc="files", unit="img", disable=args.quiet)
    for src, dst in files:
        bar = tqdm(desc=src.name, unit="tile", leave=False, disable=args.quiet)

        def progress(done: int, total: int, bar: tqdm = bar) -> None:  # type: ignore[type-arg]
            bar.total = total
            bar.update(done - bar.n)

        try:
            img = imageio.decode(src.read_bytes(), max_pixels=args.max_pixels)
            out = restore_image(model, img, tile=args.tile, progress=progress)
            dst.parent.mkdir(parents=True, exist_ok=True)
            fmt = args.format or dst.suffix.lower().lstrip(".") or "png"
            dst.write_bytes(imageio.encode(out, fmt))
        except BBCUError as e:
            failures += 1
            tqdm.write(f"bbcu: {src}: {e}", file=sys.stderr)
        finally:
            bar.close()
    if failures:
        return fail(f"{failures} of {len(inputs)} files failed", code=1)
    return 0
