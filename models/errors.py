"""Typed errors raised by the models package; each message says what was found.

Each error class carries the ``ErrorCode`` a failed job records for it; ``app.errors`` maps every
code to its HTTP answer in one table.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar


class ErrorCode(str, Enum):
    """Why a job failed or a request was refused."""

    bad_image = "bad_image"
    bad_option = "bad_option"
    too_large = "too_large"
    unknown_model = "unknown_model"
    too_costly = "too_costly"
    timeout = "timeout"
    cancelled = "cancelled"
    worker_lost = "worker_lost"
    input_lost = "input_lost"
    internal = "internal"


class BBCUError(Exception):
    """Base class of every error this project raises on purpose."""

    code: ClassVar[ErrorCode] = ErrorCode.internal


class CheckpointError(BBCUError):
    """A weights file could not be used."""


class CheckpointReadError(CheckpointError):
    """The file is missing, unreadable, or not a tensor archive we accept."""


class UnsupportedCheckpointError(CheckpointError):
    """The file holds tensors, but not a BBCU network we know."""


class CheckpointMismatchError(CheckpointError):
    """The detected network does not accept the tensors (names or shapes differ)."""


class ImageError(BBCUError):
    """An input image could not be used."""


class ImageDecodeError(ImageError):
    """Not an image, corrupt, truncated, or a format we cannot read."""

    code = ErrorCode.bad_image


class ImageTooLargeError(ImageError):
    """The image exceeds the pixel budget."""

    code = ErrorCode.too_large

    def __init__(self, message: str, pixels: int | None, max_pixels: int) -> None:
        super().__init__(message)
        self.pixels = pixels
        self.max_pixels = max_pixels


class TooManyFramesError(ImageError):
    """An animation or video has more frames than a job may hold."""

    code = ErrorCode.too_large

    def __init__(self, message: str, frames: int, max_frames: int) -> None:
        super().__init__(message)
        self.frames = frames
        self.max_frames = max_frames

    @classmethod
    def check(cls, what: str, frames: int, max_frames: int) -> None:
        """Raise for ``what`` (an animation, a video) if ``frames`` is over the limit."""
        if frames > max_frames:
            raise cls(f"the {what} has {frames} frames, over the limit of {max_frames} frames",
                      frames=frames, max_frames=max_frames)


class JobTooCostlyError(BBCUError):
    """The estimated work of a job (operations of every stage on its pixels) exceeds the budget."""

    code = ErrorCode.too_costly

    def __init__(self, message: str, gops: float, max_gops: float) -> None:
        super().__init__(message)
        self.gops = gops
        self.max_gops = max_gops


class OptionError(BBCUError):
    """An option that cannot be run (task pipeline, strength, scale); the message lists what can."""

    code = ErrorCode.bad_option


class UnknownModelError(BBCUError):
    """No catalogue entry or file matches the requested model."""

    code = ErrorCode.unknown_model
