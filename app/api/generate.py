"""``POST /generate``: one request, answered when its images are ready.

A PNG for one image; with ``Accept: application/json``, or for ``n > 1`` (a PNG holds
one image), the images as base64 with the seed, the per-step schedule and timings.
While it waits, the route watches the client: one that goes away cancels its
job, so the worker is free again within one step.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.contract import GENERATION_ERRORS, errors
from app.api.guard import GuardedRoute
from app.api.schemas import GenerateRequest
from app.api.submit import JobRequest, endpoint, to_job, wait_for_result
from app.api.views import job_view
from app.engine.jobs import Job
from app.errors import InvalidRequest

router = APIRouter(tags=["generate"], route_class=GuardedRoute, responses=errors(401))


def wants_json(request: Request, n: int) -> bool:
    """JSON where the client asks for it, or for several images unless it asks for PNG alone."""
    accept = request.headers.get("accept", "")
    if "application/json" in accept:
        return True
    if n > 1 and "image/png" in accept:
        raise InvalidRequest(
            f"n={n} gives {n} images but a PNG response holds one: accept application/json, or ask for n=1",
            param="n",
        )
    return n > 1


def warning_headers(job: Job) -> dict[str, str]:
    headers = {"X-Mixdiff-Job-Id": job.id, "X-Mixdiff-Seed": str(job.params.seed)}
    if job.result and job.result.warnings:
        headers["X-Mixdiff-Warning"] = "; ".join(job.result.warnings)
    return headers


@router.post(
    "/generate",
    responses={
        200: {
            "content": {"image/png": {}, "application/json": {}},
            "description": "a PNG, or JSON with base64 images, seed, schedule and timings (Accept: application/json, "
            "or n > 1)",
        },
        **errors(*GENERATION_ERRORS),
    },
)
async def generate(body: GenerateRequest, request: Request) -> Response:
    """Generate images and wait for them."""
    state = request.app.state
    params, schedule = to_job(JobRequest.of(body, body.width, body.height), state.settings, state.pool.loaded_model())
    json_form = wants_json(request, params.n)
    job = state.pool.submit(endpoint(request), params, schedule)
    result = await wait_for_result(job, request, state.pool)
    headers = warning_headers(job)
    if json_form:
        return JSONResponse(job_view(job), headers=headers)
    return Response(result.images[0], media_type="image/png", headers=headers)
