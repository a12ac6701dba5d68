"""``bbcu train`` and ``bbcu corpus``: train BBCU networks (Xia et al., ICLR 2023) and fetch open data."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import fail
from models.train.corpus import CorpusError
from models.train.shard import SHARD_SUFFIX
from models.vocab import DEFAULT_SR_SCALE, SR_SCALES, TASKS


def _milestones(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"milestones must be comma-separated integers: {text!r}") from e
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("milestones must be positive")
    return values


def _quality_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX JPEG qualities, got {text!r}") from e
    if not 0 <= lo <= hi <= 100:
        raise argparse.ArgumentTypeError(f"qualities must satisfy 0 <= MIN <= MAX <= 100, got {text!r}")
    return lo, hi


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from e
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a BBCU network (paper recipe by default)",
                       description="Train a BBCU network. Defaults follow the paper (docs/training.md); "
                                   "every value can be overridden.")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--scale", type=int, choices=SR_SCALES, help=f"SR scale (default {DEFAULT_SR_SCALE})")
    p.add_argument("--variant", default="l", help="l, m, or binary parts joined by '+' (SR only)")
    p.add_argument("--data", nargs="+", required=True, type=Path,
                   help="folders of HR training images and/or corpus shards (.tar, from bbcu corpus --shard)")
    p.add_argument("--channels", type=int, choices=(1, 3),
                   help="deblock only: 1 = gray/Y network (paper, default), 3 = color network")
    p.add_argument("--quality", type=_quality_range, default=(0, 50), metavar="MIN,MAX",
                   help="deblock: JPEG qualities drawn uniformly from MIN..MAX (paper 0,50)")
    p.add_argument("--iters", type=_positive, help="iterations (paper: SR 300k, others 500k)")
    p.add_argument("--batch", type=_positive, help="batch size (paper: SR 16, others 32)")
    p.add_argument("--patch", type=_positive, help="HR patch size (paper: SR 128, others 64)")
    p.add_argument("--lr", type=float, help="initial learning rate (paper 1e-4)")
    p.add_argument("--milestones", type=_milestones, help="iterations at which lr halves, e.g. 200000")
    p.add_argument("--gamma", type=float, default=0.5, help="lr factor at each milestone")
    p.add_argument("--width", type=_positive, default=64, help="feature channels n (paper 64)")
    p.add_argument("--depth", type=_positive, help="SR body blocks (16) / DnCNN layers (20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=_positive, help="torch CPU threads")
    p.add_argument("--val-every", type=_positive, default=100, help="validate every N iterations")
    p.add_argument("--val-images", type=int, default=3, help="training images held out for validation")
    p.add_argument("--save-every", type=_positive, default=25, help="write the training state every N")
    p.add_argument("--max-minutes", type=float, help="stop (and save) after this much wall time")
    p.add_argument("--min-gradient", type=float, default=2.0,
                   help="re-draw patches whose mean gradient (8-bit levels) is below this")
    p.add_argument("--init", help="initialise matching tensors from this checkpoint (e.g. x2 for x4)")
    p.add_argument("--tail-scale", type=float, default=0.1,
                   help="multiply the DnCNN tail conv's initial weights by this (1: PyTorch default)")
    p.add_argument("--shift-lr-mult", type=float, default=1.0,
                   help="lr multiplier of the learnable shifts (move0, RPReLU biases); >1 helps short runs")
    p.add_argument("--run-dir", type=Path, help="where the training state goes (default runs/<task>)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/state.pt")
    p.add_argument("--out", type=Path, help="weights file to write (.safetensors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_train)

    c = sub.add_parser("corpus", help="assemble the open training corpus from package registries",
                       description="Fetch wallpaper photos from Debian packages (apt-get download, "
                                   "dpkg-deb -x) and mvtb-data from PyPI, add extra folders, and write "
                                   "manifest.json with every file's SHA-256.")
    c.add_argument("--out", required=True, type=Path, help="output folder")
    c.add_argument("--extra", nargs="*", type=Path, default=None,
                   help="extra image folders to include (default: ../shared/datasets/train-extra if present)")
    c.add_argument("--no-debs", action="store_true", help="skip the Debian packages")
    c.add_argument("--no-pypi", action="store_true", help="skip the PyPI wheel")
    c.add_argument("--shard", type=Path, metavar="FILE.tar",
                   help="also pack the corpus into one portable file for training elsewhere")
    c.add_argument("--shard-max-side", type=_positive, default=768,
                   help="longer side of the images in the shard (larger ones are reduced)")
    c.add_argument("--shard-quality", type=int, default=95, choices=range(50, 101), metavar="50..100",
                   help="JPEG quality of the images in the shard")
    c.add_argument("--from-folder", action="store_true",
                   help="only pack an already assembled --out folder into --shard (fetch nothing)")
    c.set_defaults(handler=run_corpus)


def run_train(args: argparse.Namespace) -> int:
    from models.train.loop import TrainConfig, recipe, train

    if args.task != "sr" and args.scale not in (None, 1):
        return fail(f"--scale applies to sr only, not {args.task}")
    if args.task != "sr" and args.variant != "l":
        return fail(f"--variant applies to sr only; the {args.task} network has one layout")
    if args.channels is not None and args.task != "deblock":
        return fail(f"--channels applies to deblock only, not {args.task}")
    missing = [str(d) for d in args.data if not (d.is_dir() or (d.suffix == SHARD_SUFFIX and d.is_file()))]
    if missing:
        return fail(f"--data: not a folder or a .tar shard: {', '.join(missing)}")
    if args.out is not None and args.out.suffix != ".safetensors":
        return fail("--out must end in .safetensors")
    if args.init is not None and not Path(args.init).is_file():
        return fail(f"--init: no such file: {args.init}")
    base = recipe(args.task, args.scale)
    run_dir = args.run_dir or Path("runs") / (f"sr-x{base['scale']}" if args.task == "sr" else args.task)
    quality_min, quality_max = args.quality
    if args.resume and not (run_dir / "state.pt").is_file():
        return fail(f"--resume: no training state at {run_dir / 'state.pt'}")
    overrides = {k: v for k, v in {"iters": args.iters, "batch": args.batch, "patch": args.patch,
                                   "lr": args.lr, "milestones": args.milestones}.items() if v is not None}
    try:
        cfg = TrainConfig(task=args.task, data=tuple(str(d) for d in args.data), variant=args.variant,
                          channels=args.channels, quality_min=quality_min, quality_max=quality_max,
                          nf=args.width, depth=args.depth, gamma=args.gamma, seed=args.seed,
                          device=args.device, threads=args.threads, val_every=args.val_every,
                          val_images=args.val_images, save_every=args.save_every,
                          max_minutes=args.max_minutes, min_gradient=args.min_gradient, init=args.init,
                          tail_scale=args.tail_scale, shift_lr_mult=args.shift_lr_mult,
                          run_dir=str(run_dir), out=str(args.out) if args.out else None,
                          **{**base, **overrides})
        cfg.network()
        result = train(cfg, resume=args.resume, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:  # ShardError is a ValueError
        return fail(str(e))
    last = f", last val PSNR {result.val_psnr[-1][1]:.2f} dB" if result.val_psnr else ""
    print(f"trained {result.iterations} iterations in {result.wall_seconds / 60:.1f} min, "
          f"final loss {result.final_loss:.4f}{last}; state {result.state}"
          + (f"; weights {result.weights}" if result.weights else ""))
    return 0


def run_corpus(args: argparse.Namespace) -> int:
    from models.train.corpus import build_corpus

    extra = args.extra
    if extra is None:
        default = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "train-extra"
        extra = [default] if default.is_dir() else []
    if args.from_folder and args.shard is None:
        return fail("--from-folder needs --shard FILE.tar")
    if args.shard is not None and args.shard.suffix != SHARD_SUFFIX:
        return fail(f"--shard must end in {SHARD_SUFFIX}")
    try:
        if not args.from_folder:
            print(f"wrote {build_corpus(args.out, extra, debs=not args.no_debs, pypi=not args.no_pypi)}")
        if args.shard is not None:
            from models.train.data import list_images
            from models.train.shard import write_shard

            write_shard(list_images([args.out]), args.shard, max_side=args.shard_max_side,
                        quality=args.shard_quality)
    except (CorpusError, OSError, ValueError) as e:
        return fail(str(e))
    return 0
