"""Helpers shared by the command modules."""

from __future__ import annotations

import sys


def fail(message: str, code: int = 2) -> int:
    print(f"bbcu: error: {message}", file=sys.stderr)
    return code


def describe_stage(task: str, inference_ms: float, sigma: float | None, strength: float | None,
                   chroma_model: str | None = None, jpeg_quality: int | None = None) -> str:
    """One stage as the per-file line shows it, e.g. ``denoise 1.2 s, sigma 22.1, strength 1.00``."""
    extra = f", sigma {sigma:.1f}" if sigma is not None else ""
    extra += f", JPEG quality {jpeg_quality}" if jpeg_quality is not None else ""
    extra += f", strength {strength:.2f}" if strength is not None else ""
    if sigma is not None and strength == 0:  # auto measured too little noise: say so, not a silent "done"
        extra += " (unchanged: the noise is below the level auto denoise acts on)"
    if jpeg_quality is not None and strength == 0:
        extra += " (unchanged: the JPEG is too lightly compressed for the deblocker to improve it)"
    extra += f", chroma from {chroma_model}" if chroma_model else ""
    return f"{task} {inference_ms / 1000:.1f} s{extra}"
