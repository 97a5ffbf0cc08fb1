"""Every error response, in one place and one shape: ``{"error": {message, type, param, code}}``.

``MixdiffError`` carries its own status and type; FastAPI's validation errors become
``invalid_request`` with a message that names the field, and so does a body FastAPI
cannot parse (invalid UTF-8, JSON nested too deep); unknown routes, wrong methods and
unexpected exceptions get the same body (a 500 never shows a trace).
Request-level failures are counted here by their type; failures of jobs that run
detached from a response (``/v1/jobs``) are counted by the pool.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from app.errors import (
    GenerationFailed,
    InvalidRequest,
    MethodNotAllowed,
    MixdiffError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
)

log = logging.getLogger("mixdiff.api")


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
    if error["type"] == "string_pattern_mismatch" and path and path[-1] == "prompt":
        return f"{field} must contain something other than white space", field
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


def _from_http(request: Request, exc: HTTPException) -> MixdiffError:
    """The mixdiff error of an HTTP error raised by Starlette or FastAPI."""
    if exc.status_code == 404:
        return NotFound(f"no route {request.url.path}")
    if exc.status_code == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    if exc.status_code == 413:
        return PayloadTooLarge(str(exc.detail))
    # FastAPI's 400: a body json.loads raised on for another reason than its syntax
    return InvalidRequest("the body cannot be parsed as JSON: it is not UTF-8, or it is nested too deeply")


def _allowed(request: Request, exc: HTTPException) -> str:
    """Every method the schema documents for this path (Starlette names only those of the
    first route that matched it, and a path may have one route per method)."""
    methods = {
        method.upper()
        for path, operations in request.app.openapi()["paths"].items()
        if compile_path(path)[0].match(request.url.path)
        for method in operations
    }
    return ", ".join(sorted(methods)) if methods else (exc.headers or {}).get("Allow", "")


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    error = _from_http(request, exc)
    _count(request, error.type)
    headers = {"Allow": _allowed(request, exc)} if isinstance(error, MethodNotAllowed) else None
    return error_response(error.status, error.body(), headers)


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
