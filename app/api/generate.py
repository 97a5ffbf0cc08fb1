"""``POST /generate``: one request, answered when its images are ready.

A PNG by default (``n`` must be 1: a PNG holds one image); with ``Accept:
application/json``, the images as base64 with the seed, the per-step schedule and
timings. While it waits, the route watches the client: one that goes away cancels its
job, so the worker is free again within one step.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from app.api.auth import require_api_key
from app.api.schemas import GenerateRequest
from app.api.submit import JobRequest, endpoint, to_job, wait_for_result
from app.api.views import job_view
from app.engine.jobs import Job
from app.errors import InvalidRequest

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["generate"])

def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


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
            "description": "a PNG, or JSON with base64 images, seed, schedule and timings (Accept: application/json)",
        }
    },
)
async def generate(body: GenerateRequest, request: Request) -> Response:
    """Generate images and wait for them."""
    state = request.app.state
    params, schedule = to_job(JobRequest.of(body, body.width, body.height), state.settings, state.pool.loaded_model())
    json_form = wants_json(request)
    if params.n > 1 and not json_form:
        raise InvalidRequest(
            f"n={params.n} gives {params.n} images but a PNG response holds one: "
            "send 'Accept: application/json' to get them all, or n=1",
            param="n",
        )
    job = state.pool.submit(endpoint(request), params, schedule)
    result = await wait_for_result(job, request, state.pool)
    headers = warning_headers(job)
    if json_form:
        return JSONResponse(job_view(job), headers=headers)
    return Response(result.images[0], media_type="image/png", headers=headers)
