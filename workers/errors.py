"""The job layer's errors and the codes a failed job records (the API answers each code from one table).

``code_of`` is the one mapping from an error to its code: the models package's typed errors and the
job layer's own; anything else is ``internal`` (a bug or a broken install).
"""

from __future__ import annotations

from enum import Enum

from models.errors import (
    DeviceUnavailableError,
    ImageDecodeError,
    ImageTooLargeError,
    JobTooCostlyError,
    OptionError,
    TooManyFramesError,
    UnknownModelError,
)


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
    device_unavailable = "device_unavailable"
    internal = "internal"


class JobTimeout(Exception):
    """The job ran past the soft time limit."""


class InputLost(Exception):
    """The job's stored input is gone before it ran (expired after result_ttl_s, or lost by Redis)."""


_CODES: tuple[tuple[type[Exception], ErrorCode], ...] = (
    (ImageDecodeError, ErrorCode.bad_image),
    (ImageTooLargeError, ErrorCode.too_large),
    (TooManyFramesError, ErrorCode.too_large),
    (JobTooCostlyError, ErrorCode.too_costly),
    (OptionError, ErrorCode.bad_option),
    (UnknownModelError, ErrorCode.unknown_model),
    (DeviceUnavailableError, ErrorCode.device_unavailable),
    (JobTimeout, ErrorCode.timeout),
    (InputLost, ErrorCode.input_lost),
)


def code_of(error: BaseException) -> ErrorCode:
    """The code a job failed by ``error`` records (``internal`` for an error nobody raised on purpose)."""
    return next((code for kind, code in _CODES if isinstance(error, kind)), ErrorCode.internal)


class ServiceError(Exception):
    """Base class of the job layer's deliberate errors."""


class StoreUnavailable(ServiceError):
    """Redis (the broker and blob store) cannot be reached."""


class StoreFull(ServiceError):
    """The embedded store's memory budget is filled by the inputs of accepted jobs."""


class QueueFull(ServiceError):
    """No room for another job: the embedded pool's queue, or Redis's admission limits (jobs, bytes)."""


class NoWorker(ServiceError):
    """The requested device has no worker to run the job."""
