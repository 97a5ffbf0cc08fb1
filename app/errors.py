"""The one error hierarchy of mixdiff.

Every failure a client can see is a ``MixdiffError``. Its ``type`` is the stable
machine-readable name (and the ``reason`` label of the failure counter), its
``status`` the HTTP status it maps to. ``app.api.errors`` turns any of them into
the OpenAI-shaped body ``{"error": {"message", "type", "param", "code"}}``.
Workers raise the same classes; across the process boundary only ``type`` and
``message`` travel, and ``from_type`` rebuilds the error on the API side.
"""

from __future__ import annotations


class MixdiffError(Exception):
    status: int = 500
    type: str = "generation_failed"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(MixdiffError):
    """The request cannot be served as asked: say what to change."""

    status = 422
    type = "invalid_request"


class Unsupported(MixdiffError):
    """A well-formed request for something this server does not offer (image URLs, say)."""

    status = 400
    type = "unsupported"


class Unauthorized(MixdiffError):
    status = 401
    type = "unauthorized"


class NotFound(MixdiffError):
    status = 404
    type = "not_found"


class MethodNotAllowed(MixdiffError):
    status = 405
    type = "method_not_allowed"


class PayloadTooLarge(MixdiffError):
    status = 413
    type = "payload_too_large"


class UnsupportedMediaType(MixdiffError):
    """A body that is not ``application/json``."""

    status = 415
    type = "unsupported_media_type"


class Overloaded(MixdiffError):
    """The queue is full; the client should retry after ``retry_after`` seconds."""

    status = 429
    type = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class NotReady(MixdiffError):
    """No worker can take work now (starting, restarting, or shutting down)."""

    status = 503
    type = "not_ready"


class WorkerDied(MixdiffError):
    """The worker process running the job exited; the job is lost, the worker restarts."""

    status = 503
    type = "worker_died"


class StoreUnavailable(MixdiffError):
    """The shared job store (Redis) does not answer: job routes wait for it, /generate does not need it."""

    status = 503
    type = "store_unavailable"


class Timeout(MixdiffError):
    status = 504
    type = "timeout"


class Cancelled(MixdiffError):
    """The client cancelled the job or went away. 499 is nginx's 'client closed request'."""

    status = 499
    type = "cancelled"


class GenerationFailed(MixdiffError):
    status = 500
    type = "generation_failed"


_BY_TYPE = {
    cls.type: cls
    for cls in (
        InvalidRequest,
        Unsupported,
        Unauthorized,
        NotFound,
        MethodNotAllowed,
        PayloadTooLarge,
        UnsupportedMediaType,
        Overloaded,
        NotReady,
        WorkerDied,
        StoreUnavailable,
        Timeout,
        Cancelled,
        GenerationFailed,
    )
}

#: Every ``type`` a client may see: the label values of ``mixdiff_failures_total``.
ERROR_TYPES = tuple(_BY_TYPE)


def from_type(type_: str, message: str, param: str | None = None) -> MixdiffError:
    """Rebuild an error sent by a worker as (type, message, param)."""
    return _BY_TYPE.get(type_, GenerationFailed)(message, param=param)
