"""The optional API key: when ``settings.api_key`` is set, generation and model routes
need ``Authorization: Bearer <key>``. Health and metrics stay open for probes and
Prometheus."""

from __future__ import annotations

import secrets

from fastapi import Request

from app.errors import Unauthorized


async def require_api_key(request: Request) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
