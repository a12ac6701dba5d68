"""What a restoration asks for: a pipeline of tasks and the denoise strength (torch-free).

A pipeline is one task or several run one after the other on the previous stage's output, written
``deblock,sr`` (deblock a JPEG, then upscale it). Each task appears once and ``sr`` only last, since
every other network is trained on images at their captured size.

The strength applies to the denoise stage: ``output = input + strength * (network - input)``;
``auto`` (the default) estimates the input's noise and picks the strength from it (models.noise).
"""

from __future__ import annotations

from itertools import permutations
from typing import Literal

from models.errors import OptionError
from models.vocab import SR_SCALES, TASKS

AUTO: Literal["auto"] = "auto"
Strength = float | Literal["auto"]
STRENGTH_TASK = "denoise"
DEBLOCK_TASK = "deblock"  # its strength comes from the JPEG file's quality (models.deblock_strength)


def _pipelines() -> tuple[str, ...]:
    """Every valid pipeline: distinct tasks in any order, sr (if any) last."""
    found = [",".join(p) for n in range(1, len(TASKS) + 1) for p in permutations(TASKS, n)
             if "sr" not in p[:-1]]
    return tuple(found)


PIPELINES: tuple[str, ...] = _pipelines()


def parse_pipeline(text: str) -> tuple[str, ...]:
    """``"deblock,sr"`` -> ``("deblock", "sr")``; an OptionError for unknown, repeated or misplaced tasks."""
    tasks = tuple(t.strip().lower() for t in text.split(","))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise OptionError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}, "
                          "or a comma list such as deblock,sr")
    if len(set(tasks)) != len(tasks):
        raise OptionError(f"task pipeline {text!r} repeats a task; each task may run once")
    if "sr" in tasks[:-1]:
        raise OptionError(f"task pipeline {text!r} upscales before another task; sr must come last")
    return tasks


def parse_strength(text: str | float | None) -> Strength | None:
    """``auto``, or a number from 0 to 1; None when not given."""
    if text is None:
        return None
    if isinstance(text, str) and text.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise OptionError(f"strength must be 'auto' or a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise OptionError(f"strength must be from 0 to 1 (or 'auto'), got {value:g}")
    return value


def check_options(tasks: tuple[str, ...], scale: int | None, strength: Strength | None) -> None:
    """A scale needs an sr stage (and is 2, 3 or 4); a strength needs a denoise stage."""
    if scale is not None and "sr" not in tasks:
        raise OptionError(f"scale applies to sr only (task {','.join(tasks)} has scale 1)")
    if scale is not None and scale not in SR_SCALES:
        raise OptionError(f"scale {scale} is not supported for sr; "
                          f"choose from {', '.join(map(str, SR_SCALES))}")
    if strength is not None and STRENGTH_TASK not in tasks:
        raise OptionError(f"strength applies to the {STRENGTH_TASK} stage; the pipeline "
                          f"{','.join(tasks)} has none")
