"""``bbcu models`` (the shipped catalogue) and ``bbcu info CKPT`` (what a checkpoint file is)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cli.common import fail


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("models", help="list the shipped models with their metadata")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run_models)
    q = sub.add_parser("info", help="describe a checkpoint file or a shipped model as JSON")
    q.add_argument("checkpoint", metavar="CKPT", help="a checkpoint file, or a name from `bbcu models`")
    q.set_defaults(handler=run_info)


def _headline_psnr(meta: dict[str, Any]) -> str:
    ev = meta.get("eval")
    if not isinstance(ev, dict):
        return "-"
    parts = [f"{k}: {v:.2f}" if isinstance(v, (int, float)) else f"{k}: {v}"
             for k, v in ev.items() if "psnr" in k.lower()]
    return "; ".join(parts[:3]) or "-"


def run_models(args: argparse.Namespace) -> int:
    from models import catalog

    entries = catalog.entries()
    if args.json:
        print(json.dumps([e.summary() for e in entries], indent=2, sort_keys=True))
        return 0
    if not entries:
        print("no shipped weights in", catalog.WEIGHTS_DIR)
        return 0
    print(f"{'name':<16} {'task':<8} {'scale':>5} {'variant':<8} measured PSNR (dB)")
    for e in entries:
        print(f"{e.name:<16} {e.task:<8} {e.scale:>5} {e.variant:<8} {_headline_psnr(e.metadata)}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from models import catalog, checkpoints
    from models.complexity import count
    from models.errors import BBCUError

    path = Path(args.checkpoint)
    try:
        if not path.exists() and path.suffix not in checkpoints.SUFFIXES:
            path = catalog.by_name(args.checkpoint).path
        ckpt = checkpoints.read(path)
        checkpoints.build_network(ckpt)
    except BBCUError as e:
        return fail(str(e))
    c = count(ckpt.config)
    info = {"file": str(path), "format": ckpt.format, "sha256": ckpt.sha256,
            "config": ckpt.config.to_dict(), "variant": ckpt.config.variant,
            "tensors": len(ckpt.state_dict), "complexity_320x180": c.as_dict(),
            "metadata": ckpt.metadata}
    print(json.dumps(info, indent=2, sort_keys=True, default=str))
    return 0
