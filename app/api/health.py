"""Probes and metrics, open without the API key.

``/health/live``: the process answers (GET or HEAD). ``/health/ready``: a worker is
loaded and the server admits work (503 while loading, while every worker restarts, and
after SIGTERM); it lists the workers with their pids and states (GET, or HEAD for the
status alone). ``/metrics``: Prometheus.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from app.api.contract import ErrorDetail
from app.errors import NotReady

router = APIRouter(tags=["health"])


class Live(BaseModel):
    status: Literal["live"]


class Ready(BaseModel):
    status: Literal["ready", "not_ready"]
    workers: list[dict] = Field(description="each worker: index, pid, state, cores, restarts")
    error: ErrorDetail | None = Field(None, description="why not ready (absent when ready)")


@router.get("/health/live", response_model=Live)
@router.head("/health/live", response_model=Live, operation_id="live_head")
async def live() -> dict:
    return {"status": "live"}


_NOT_READY = {503: {"model": Ready, "description": "not ready: loading, every worker restarting, or shutting down"}}


@router.get("/health/ready", response_model=Ready, responses=_NOT_READY)
@router.head("/health/ready", response_model=Ready, responses=_NOT_READY, operation_id="ready_head")
async def ready(request: Request) -> JSONResponse:
    pool = request.app.state.pool
    body = {"status": "ready" if pool.ready else "not_ready", "workers": pool.describe()}
    if pool.ready:
        return JSONResponse(body)
    reason = pool.fatal or ("shutting down" if not pool.accepting else "no worker is loaded yet")
    body.update(NotReady(reason).body())
    return JSONResponse(body, status_code=503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
