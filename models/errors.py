"""Typed errors raised by the models package; each message says what was found.

The job layer gives each a code (``workers.errors.code_of``), and ``app.errors`` maps every code to
its HTTP answer in one table.
"""

from __future__ import annotations


class BBCUError(Exception):
    """Base class of every error this project raises on purpose."""


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


class ImageTooLargeError(ImageError):
    """The image exceeds the pixel budget."""

    def __init__(self, message: str, pixels: int | None, max_pixels: int) -> None:
        super().__init__(message)
        self.pixels = pixels
        self.max_pixels = max_pixels


class TooManyFramesError(ImageError):
    """An animation or video has more frames than a job may hold."""

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

    def __init__(self, message: str, gops: float, max_gops: float) -> None:
        super().__init__(message)
        self.gops = gops
        self.max_gops = max_gops


class OptionError(BBCUError):
    """An option that cannot be run (task pipeline, strength, scale); the message lists what can."""


class UnknownModelError(BBCUError):
    """No catalogue entry or file matches the requested model."""


class DeviceUnavailableError(BBCUError):
    """The requested device (CUDA) is not available in this process: the machine's fault, not the
    request's."""
