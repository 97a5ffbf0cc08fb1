"""What a request must pass before FastAPI reads its body: the API key, then the media type.

When ``settings.api_key`` is set, the generation, job and model routes need
``Authorization: Bearer <key>`` (401 otherwise); health and metrics stay open for
probes and Prometheus. A route whose body is JSON refuses any other media type with
415: a form post, ``text/plain`` or a body without ``Content-Type`` would otherwise
reach validation as raw bytes. Both run in ``GuardedRoute``, ahead of body parsing, so
a client without the key learns nothing about the body it sent.
"""

from __future__ import annotations

import secrets

from fastapi import Request
from fastapi.routing import APIRoute

from app.errors import Unauthorized, UnsupportedMediaType


def require_api_key(request: Request) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")


def is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not is_json(content_type):
        given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise UnsupportedMediaType(f"the body must be JSON, sent with 'Content-Type: application/json'; got {given}")


class GuardedRoute(APIRoute):
    """A route behind the API key, whose body (if it takes one) must be JSON."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def guarded(request: Request):
            require_api_key(request)
            if takes_body:
                require_json(request)
            return await handler(request)

        return guarded
