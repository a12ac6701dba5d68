"""``bbcu restore --url``: the same command against a running service, through ``bbcu_client``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.common import describe_stage, fail
from models.vocab import format_of

# option -> its default
_LOCAL_ONLY = {"weights": None, "backend": "auto", "max_pixels": 100_000_000, "max_frames": 100_000}


def restore_remote(args: argparse.Namespace, pairs: list[tuple[Path, Path]]) -> int:
    """Restore each (input, output) pair on the service at ``args.url``; 1 if any failed."""
    import httpx

    from bbcu_client import Client, Restored, ServiceError

    local = [f"--{name.replace('_', '-')}" for name, default in _LOCAL_ONLY.items()
             if getattr(args, name) != default]
    if local:
        return fail(f"{', '.join(local)} cannot be used with --url (the service uses its own models)")
    if args.concurrency < 1:
        return fail(f"--concurrency must be at least 1, got {args.concurrency}")
    suffix = pairs[0][1].suffix.lower().lstrip(".")
    fmt = args.format or format_of(suffix) or "png"
    failures = 0
    # a bar on a terminal only: in a pipe or a log its \r redraws would be noise (one line per file)
    bar = not args.quiet and sys.stderr.isatty()

    def save(index: int, outcome: Restored | Exception) -> None:
        nonlocal failures
        src, dst = pairs[index]
        if isinstance(outcome, Restored):
            dst.parent.mkdir(parents=True, exist_ok=True)
            outcome.save(dst)
            if not args.quiet:
                from tqdm import tqdm

                stages = "; ".join(
                    describe_stage(s["task"], s["inference_ms"], s.get("sigma"), s.get("strength"),
                                   s.get("chroma_model"), s.get("jpeg_quality"))
                    for s in outcome.job.get("stages", []))
                line = f"{src} -> {dst} (job {outcome.job['id']}: {stages})"
                if bar:
                    tqdm.write(line, file=sys.stderr)  # above the bar
                else:
                    print(line, file=sys.stderr, flush=True)
        else:
            failures += 1
            print(f"bbcu: {src}: {outcome}", file=sys.stderr)

    client = Client(args.url, api_key=args.api_key, timeout=120.0)
    try:
        client.models()  # one cheap request first: an unreachable service is one clear error
        extra = {k: v for k, v in (("strength", args.strength), ("quality", args.quality)) if v is not None}
        client.restore_many([src for src, _ in pairs], task=args.task, scale=args.scale, variant=args.variant,
                            format=fmt, tile=args.tile, device="gpu" if args.device == "cuda" else None,
                            options=extra, concurrency=args.concurrency, on_result=save,
                            progress_bar=bar)
    except ServiceError as e:
        return fail(f"{args.url}: {e}")
    except httpx.HTTPError as e:
        return fail(f"cannot reach {args.url}: {e}")
    if failures:
        return fail(f"{failures} of {len(pairs)} files failed", code=1)
    return 0
