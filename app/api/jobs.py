"""Asynchronous jobs: submit, poll, follow step by step (server-sent events), cancel.

``POST /v1/jobs`` answers 202 at once with the job and its ``Location``. The events
stream sends ``step`` (index, timestep, precision, seconds) per denoising step, then
``completed`` or ``failed``; a subscriber who comes late gets the past events first.
Finished jobs are kept for ``job_ttl`` seconds.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.api.contract import ADMISSION_ERRORS, errors
from app.api.guard import GuardedRoute
from app.api.schemas import GenerateRequest
from app.api.submit import JobRequest, endpoint, to_job
from app.api.views import job_view

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=GuardedRoute, responses=errors(401))


@router.post("", status_code=202, responses=errors(*ADMISSION_ERRORS))
async def create_job(body: GenerateRequest, request: Request) -> JSONResponse:
    """Queue a generation; 202 with the job, ``Location`` points at it."""
    state = request.app.state
    params, schedule = to_job(JobRequest.of(body, body.width, body.height), state.settings, state.pool.loaded_model())
    job = state.pool.submit(endpoint(request), params, schedule, detached=True)
    return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/{job_id}", responses=errors(404))
async def get_job(job_id: str, request: Request) -> dict:
    """The job's status; when completed, its images (base64 PNG), schedule and timings."""
    return job_view(request.app.state.jobs.get(job_id))


@router.post("/{job_id}/cancel", responses=errors(404))
async def cancel_job(job_id: str, request: Request) -> dict:
    """Cancel a queued or running job (its worker is free within one step); a finished job is left as is."""
    state = request.app.state
    job = state.jobs.get(job_id)
    state.pool.cancel(job)
    return job_view(job, images=False)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **errors(404)},
)
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: ``step`` per denoising step, then ``completed`` or ``failed``."""
    job = request.app.state.jobs.get(job_id)

    async def stream():
        async for event, data in job.subscribe():
            yield f"event: {event}\ndata: {json.dumps(data)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
