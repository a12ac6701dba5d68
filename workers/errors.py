"""Errors of the job layer that the API turns into HTTP answers."""


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
