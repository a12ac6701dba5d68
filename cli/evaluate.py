"""``bbcu eval``: the BBCU paper's evaluation protocol (Xia et al., ICLR 2023) over a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.common import fail
from models.vocab import BACKENDS, DEFAULT_SR_SCALE, PRECISIONS, SR_SCALES, TASKS, VARIANTS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a network with the paper's protocol",
                       description="PSNR/SSIM per image and mean, next to the baseline (bicubic, noisy "
                                   "input, JPEG input), by the protocol of docs/evaluation.md.")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--data", required=True, type=Path, help="folder of clean/HR images")
    p.add_argument("--scale", type=int, choices=SR_SCALES, help=f"sr only (default {DEFAULT_SR_SCALE})")
    p.add_argument("--variant", choices=VARIANTS, help="variant of the shipped weights")
    p.add_argument("--weights", type=Path,
                   help="checkpoint file, or a shipped model's name such as bbcu-sr-x2 (default: the "
                        "shipped one for the task)")
    p.add_argument("--sigma", type=float, default=25.0, help="denoise noise level (0..255)")
    p.add_argument("--quality", type=int, default=10, help="deblock JPEG quality (0..100)")
    p.add_argument("--color", action="store_true",
                   help="deblock: color 4:2:0 JPEGs scored on RGB, restored as the service restores a "
                        "color photo (the gray network on luma, chroma from the shipped color network, "
                        "the strength from the JPEG's quality)")
    p.add_argument("--seed", type=int, default=0, help="numpy seed of the noise")
    p.add_argument("--tile", type=int, default=512, help="tile size in input pixels (0: whole image)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="float layers' arithmetic (CPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the full report as JSON")
    p.add_argument("--record", action="store_true",
                   help="store the mean result in the weights file's 'eval' metadata")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from models.engine import load_chroma_partner, load_for_task
    from models.errors import BBCUError
    from models.eval import evaluate, record

    if args.scale is not None and args.task != "sr":
        return fail("--scale applies to --task sr only")
    if not args.data.is_dir():
        return fail(f"--data: not a folder: {args.data}")
    if args.weights is not None and not args.weights.is_file():
        from models import catalog
        from models.errors import UnknownModelError

        try:  # a shipped model's name works from any folder, unlike a path into the checkout
            args.weights = catalog.by_name(str(args.weights)).path
        except UnknownModelError as e:
            return fail(f"--weights: no such file, and {e}")
    if args.record and (args.weights is None or args.weights.suffix != ".safetensors"):
        return fail("--record needs --weights pointing at a .safetensors file")
    if args.tile < 0 or 0 < args.tile < 16:
        return fail(f"--tile must be 0 or at least 16, got {args.tile}")
    if args.limit is not None and args.limit < 1:
        return fail("--limit must be positive")
    if args.color and args.task != "deblock":
        return fail("--color applies to --task deblock only")
    if args.color and args.record:
        return fail("--record stores a network's own result; --color scores the service's color path")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_for_task(args.task, args.scale, args.variant, args.weights, device=args.device,
                              backend=args.backend, precision=args.precision)
        chroma = None
        if args.color:
            chroma = load_chroma_partner(args.task, args.variant, args.weights, device=args.device,
                                         backend=args.backend, precision=args.precision)
        report = evaluate(model, args.task, args.data, sigma=args.sigma, quality=args.quality,
                          seed=args.seed, tile=args.tile or None, limit=args.limit,
                          progress=None if args.quiet else (lambda msg: print(msg, flush=True)),
                          color=args.color, chroma=chroma)
    except (BBCUError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    print(report.table())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    if args.record:
        record(args.weights, report)
        print(f"recorded {report.key} in {args.weights}")
    return 0
