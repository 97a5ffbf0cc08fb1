"""Probes and metrics, open without the API key.

``/health/live``: the process answers. ``/health/ready``: a worker is loaded and the
server admits work (503 while loading, while every worker restarts, and after
SIGTERM); it lists the workers with their pids and states. ``/metrics``: Prometheus.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/health/live")
async def live() -> dict:
    return {"status": "live"}


@router.get("/health/ready")
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
