"""Typed errors raised by the models package; each message says what was found."""


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

    def __init__(self, message: str, pixels: int, max_pixels: int) -> None:
        super().__init__(message)
        self.pixels = pixels
        self.max_pixels = max_pixels


class UnknownModelError(BBCUError):
    """No catalogue entry or file matches the requested model."""
