"""``make bench``: every benchmark section, one run, printed as markdown and saved to .bench/."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

SECTIONS = {
    # one table serves issues 2 and 4: paper-style float simulation, float engine, bit-packed engine
    "kernels": ("Engine and bit-packed 1-bit kernels vs the paper-style float simulation",
                "benchmarks.kernels"),
    "service": ("Service overhead (API + Celery + Redis vs engine alone)", "benchmarks.service"),
    "gpu": ("The engine on a GPU vs the paper-style float simulation (same GPU and weights)",
            "benchmarks.gpu"),
    "tiles": ("Default tile vs the best tile (640x480, every task) and a 12 MP denoise's peak RSS",
              "benchmarks.tiles"),
    "peers": ("Our networks vs the float networks a user would run instead (quality vs milliseconds)",
              "benchmarks.peers"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    out = [f"# bbcu bench — {time.strftime('%Y-%m-%d %H:%M:%S')} — {machine}"]
    for key in args.sections:
        title, module_name = SECTIONS[key]
        print(f"== {title}", file=sys.stderr, flush=True)
        module = importlib.import_module(module_name)
        table = module.run()
        out.append(f"\n## {title}\n\n{table}")
        print(out[-1], flush=True)
    Path(".bench").mkdir(exist_ok=True)
    Path(".bench/results.md").write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
