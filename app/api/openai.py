"""``POST /v1/images/generations``, OpenAI's images API: existing clients work unchanged.

OpenAI's fields (``prompt``, ``n``, ``size``, ``response_format``; ``quality``, ``style``
and ``user`` accepted and ignored) plus mixdiff's as extra fields (``precision``,
``steps``, ``seed``, ...; ``extra_body`` in OpenAI's Python client). Only ``b64_json``
is offered: the server does not host images, and ``url`` answers 400.
"""

from __future__ import annotations

import base64
import re

from fastapi import APIRouter, Request

from app.api.contract import GENERATION_ERRORS, errors
from app.api.guard import GuardedRoute
from app.api.schemas import ImageGenerationRequest
from app.api.submit import JobRequest, endpoint, to_job, wait_for_result
from app.errors import InvalidRequest, Unsupported

router = APIRouter(prefix="/v1", tags=["openai"], route_class=GuardedRoute, responses=errors(401))

_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    match = _SIZE.match(size)
    if not match:
        raise InvalidRequest(f"size must be 'WIDTHxHEIGHT' such as '512x512', got {size!r}", param="size")
    return int(match[1]), int(match[2])


@router.post("/images/generations", responses=errors(400, *GENERATION_ERRORS))
async def images_generations(body: ImageGenerationRequest, request: Request) -> dict:
    """Generate images; answers ``{created, data: [{b64_json}]}``."""
    if body.response_format != "b64_json":
        raise Unsupported(
            "response_format 'url' is not supported: the server does not host images; use 'b64_json'",
            param="response_format",
        )
    state = request.app.state
    width, height = _parse_size(body.size)
    params, schedule = to_job(JobRequest.of(body, width, height), state.settings, state.pool.loaded_model())
    job = state.pool.submit(endpoint(request), params, schedule)
    result = await wait_for_result(job, request, state.pool)
    return {
        "created": int(job.created),
        "data": [{"b64_json": base64.b64encode(png).decode()} for png in result.images],
    }
