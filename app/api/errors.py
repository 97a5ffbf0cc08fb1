"""Every error response, in one place and one shape: ``{"error": {message, type, param, code}}``.

``MixdiffError`` carries its own status and type; FastAPI's validation errors become
``invalid_request`` with a message that names the field; unknown routes, wrong
methods and unexpected exceptions get the same body (a 500 never shows a trace).
Request-level failures are counted here by their type; failures of jobs that run
detached from a response (``/v1/jobs``) are counted by the pool.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.errors import GenerationFailed, MixdiffError, Overloaded

log = logging.getLogger("mixdiff.api")

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def error_response(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _count(request: Request, type_: str) -> None:
    request.app.state.metrics.failures.labels(type_).inc()


async def _mixdiff_error(request: Request, exc: MixdiffError) -> JSONResponse:
    _count(request, exc.type)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
    if exc.type == "unauthorized":
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.status, exc.body(), headers)


def _field(error: dict) -> list[str]:
    """The field path of a pydantic error, without the request part and union branch names."""
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
    return [part for part in loc if not (part[:1].isupper() or "[" in part or part in ("str", "int", "float"))]


def _describe(errors: list[dict]) -> tuple[str, str | None]:
    """A message that says what to change, and the offending field, from pydantic's errors.

    A value that fits none of a union's forms (``precision``) yields one error per form:
    the deepest one points at the real mistake (an unknown key in a split schedule);
    if none is deeper, the message lists the forms."""
    error = max(errors, key=lambda e: len(e.get("loc", ())))
    path = _field(error)
    field = ".".join(path)
    if error["type"] == "extra_forbidden":
        return f"unknown field {field!r}; see the request schema at /docs", field
    if error["type"] == "missing":
        return f"field {field!r} is required", field
    if error["type"] == "json_invalid":
        return f"the body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}", None
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f", got {got!r}"
    union = [e for e in errors if _field(e) == path]
    if len(union) > 1 and path == ["precision"]:
        return (
            'precision must be a precision name ("bf16"), a split schedule '
            '({"high": "fp32", "low": "bf16", "first": 1, "last": 1}) or a list with one precision per step'
            + shown,
            field,
        )
    return f"{field or 'body'}: {error['msg'][0].lower()}{error['msg'][1:]}{shown}", field or None


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    message, param = _describe(list(errors)) if errors else ("invalid request", None)
    _count(request, "invalid_request")
    body = {"error": {"message": message, "type": "invalid_request", "param": param, "code": None}}
    return error_response(422, body)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    if exc.status_code == 413:
        _count(request, type_)
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}.get(
        exc.status_code, str(exc.detail)
    )
    body = {"error": {"message": message, "type": type_, "param": None, "code": None}}
    return error_response(exc.status_code, body, getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    error = GenerationFailed(f"internal error ({type(exc).__name__}); see the server log")
    _count(request, error.type)
    return error_response(error.status, error.body())


def install(app: FastAPI) -> None:
    app.add_exception_handler(MixdiffError, _mixdiff_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
