"""``bbcu models`` (the shipped catalogue) and ``bbcu info CKPT`` (what a checkpoint file is)."""

from __future__ import annotations

import argparse
import json
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from cli.common import fail


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped models with their metadata")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run_models)
    q = sub.add_parser("info", help="describe a checkpoint file or a shipped model as JSON")
    q.add_argument("checkpoint", metavar="CKPT", help="a checkpoint file, or a name from `bbcu models`")
    q.set_defaults(handler=run_info)


def db(value: object) -> str:
    """A PSNR to 0.01 dB, half up from the recorded figure as the README's tables round (37.165 -> 37.17)."""
    if not isinstance(value, (int, float)):
        return "-"
    return str(Decimal(str(value)).quantize(Decimal("0.01"), ROUND_HALF_UP))


def _natural(key: str) -> list[object]:
    """Sort key that puts sigma5 before sigma15."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _results(meta: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(benchmark, PSNR, baseline) per benchmark a weights file records, e.g. ("CBSD68/sigma15",
    "32.34", "noisy 24.84"); a noise-free input has no finite PSNR: "inf"."""
    ev = meta.get("eval")
    if not isinstance(ev, dict):
        return []
    rows = []
    for bench in sorted((k for k, v in ev.items() if isinstance(v, dict)), key=_natural):
        r = ev[bench]
        base = r.get("baseline_psnr")
        identical = base is None and r.get("baseline_ssim") == 1.0  # the input is the clean image
        rows.append((bench, db(r.get("psnr")), f"{r.get('baseline', 'input')} "
                                                 f"{'inf' if identical else db(base)}"))
    return rows


def run_models(args: argparse.Namespace) -> int:
    from models import catalog

    entries = catalog.entries()
    if args.json:
        print(json.dumps([e.summary() for e in entries], indent=2, sort_keys=True))
        return 0
    if not entries:
        print("no shipped weights in", catalog.WEIGHTS_DIR)
        return 0
    header = ("name", "task", "scale", "variant", "benchmark", "PSNR (dB)", "baseline (dB)")
    rows: list[tuple[str, ...]] = []
    for e in entries:
        results = _results(e.metadata) or [("-", "-", "-")]
        for n, result in enumerate(results):  # one row per benchmark, the model named on its first
            model = (e.name, e.task, str(e.scale), e.variant) if n == 0 else ("", "", "", "")
            rows.append((*model, *result))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    right = {2, 5}  # numbers: scale and PSNR
    for row in (header, *rows):
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
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
