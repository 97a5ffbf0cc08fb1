"""Asynchronous jobs: submit, poll, follow step by step (server-sent events), cancel.

``POST /v1/jobs`` answers 202 at once with the job and its ``Location``. The events
stream sends ``step`` (index, timestep, precision, seconds) per denoising step, then
``completed`` or ``failed``; a subscriber who comes late gets the past events first,
or those after its ``Last-Event-ID``. Finished jobs are kept for ``job_ttl`` seconds.
The routes read jobs from the job board (``app.api.job_board``): this process's, or
Redis shared by replicas.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Header, Request
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
    await state.board.admitted(job)
    return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/{job_id}", responses=errors(404, 503))
async def get_job(job_id: str, request: Request) -> dict:
    """The job's status; when completed, its images (base64 PNG), schedule and timings."""
    return await request.app.state.board.view(job_id)


@router.post("/{job_id}/cancel", responses=errors(404, 503))
async def cancel_job(job_id: str, request: Request) -> dict:
    """Cancel a queued or running job (its worker is free within one step); a finished job is left as is."""
    return await request.app.state.board.cancel(job_id)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **errors(404, 422, 503)},
)
async def job_events(
    job_id: str,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """Server-sent events: ``step`` per denoising step, then ``completed`` or ``failed``; each
    with an ``id``: a client that reconnects with ``Last-Event-ID`` gets the events after it."""
    events = await request.app.state.board.events(job_id, last_event_id)

    async def stream():
        async for event_id, event, data in events:
            yield f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
