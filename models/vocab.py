"""The domain vocabulary: tasks, scales, variants, backends, output formats (no torch, no pydantic).

Every list of allowed values is written here once; the API, the workers, the CLI and the networks
import it, so adding a value (a scale, a format) is a change in one place.
"""

from __future__ import annotations

from typing import Literal, get_args

Task = Literal["sr", "denoise", "deblock"]
TASKS: tuple[Task, ...] = get_args(Task)

SR_SCALES: tuple[int, ...] = (2, 3, 4)
DEFAULT_SR_SCALE = 4

# named network variants and the parts they binarize (BBCU-L: the body; BBCU-M: body and upsampler)
VARIANT_PARTS: dict[str, frozenset[str]] = {
    "l": frozenset({"body"}),
    "m": frozenset({"body", "up"}),
}
VARIANTS: tuple[str, ...] = tuple(VARIANT_PARTS)

# compute paths of the engine (models.engine): auto is bitpacked on a CPU where the C kernels are
# built, else float, and fp16 on CUDA; fp16 and fused (Triton units) run on CUDA only, bitpacked on
# the CPU only
Backend = Literal["auto", "float", "fp16", "fused", "bitpacked"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)

# arithmetic of the engine's float layers (head, upsampler, tail convolutions) on the CPU: fp32, the
# default and exact reference; bf16, opt-in, on CPUs with bf16 instructions (docs/engine.md gives the
# PSNR change on every benchmark). The binary units are exact integer counts in either.
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

# Activation memory of one tile: the one default of the CLI, the engine and the service.
DEFAULT_TILE_MEMORY_MB = 2048

Format = Literal["png", "webp", "jpeg", "tiff", "gif", "mp4", "webm", "mov"]
FORMATS: tuple[Format, ...] = get_args(Format)
# what each kind of input can be written as: a still as any image format, an animation (APNG, GIF,
# animated WebP) as a format that holds frames, a video as a video container
STILL_FORMATS: tuple[Format, ...] = ("png", "webp", "jpeg", "tiff", "gif")
ANIMATED_FORMATS: tuple[Format, ...] = ("png", "webp", "gif")
VIDEO_FORMATS: tuple[Format, ...] = ("mp4", "webm", "mov")
MEDIA_TYPES: dict[Format, str] = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg",
                                  "tiff": "image/tiff", "gif": "image/gif", "mp4": "video/mp4",
                                  "webm": "video/webm", "mov": "video/quicktime"}
# file-name spellings accepted for a format
FORMAT_ALIASES: dict[str, Format] = {"jpg": "jpeg", "tif": "tiff", "apng": "png", "qt": "mov"}


def scale_for(task: str, scale: int | None = None) -> int:
    """The scale a task runs at: SR defaults to x4, the other tasks are always x1."""
    if task == "sr":
        return scale or DEFAULT_SR_SCALE
    return 1


def default_k(nf: int) -> float:
    """The paper's residual-alignment factor k = 130 * n / 64 for n feature channels."""
    return 130.0 * nf / 64.0


def format_of(name: str) -> Format | None:
    """The output format a file extension or format name denotes ('jpg' -> 'jpeg'); None if none."""
    key = name.lower().lstrip(".")
    if key in FORMAT_ALIASES:
        return FORMAT_ALIASES[key]
    for fmt in FORMATS:
        if fmt == key:
            return fmt
    return None
