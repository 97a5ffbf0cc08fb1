"""The FastAPI application: routers, error handlers, body limit, and the pool's life cycle.

``create_app(settings)`` builds everything the server holds (metrics registry, job
store, worker pool, job board) and keeps it on ``app.state``; nothing is global, so tests can
run several apps side by side. The lifespan starts the workers (they load in the
background: ``/health/ready`` says when) and, at shutdown, drains them.
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import app as package
from app.api import a1111, contract, errors, generate, health, job_board, jobs, models, openai, playground
from app.api.submit import endpoints
from app.engine.jobs import JobStore
from app.engine.metrics import Metrics
from app.engine.pool import WorkerPool
from app.errors import PayloadTooLarge
from app.settings import Settings

#: Every router of the app, in the order it matches them.
ROUTERS = (generate.router, jobs.router, openai.router, a1111.router, models.router, health.router, playground.router)


class BodyLimit:
    """413 for request bodies over ``max_bytes``: at once from Content-Length, or as soon
    as a streamed body grows past it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _message(self) -> str:
        return f"request body larger than max_body_bytes={self.max_bytes}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            scope["app"].state.metrics.failures.labels(PayloadTooLarge.type).inc()
            body = json.dumps(PayloadTooLarge(self._message()).body()).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": PayloadTooLarge.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(PayloadTooLarge.status, self._message())
            return message

        await self.app(scope, limited, send)


@asynccontextmanager
async def lifespan(app: FastAPI):
    await app.state.pool.start()
    await app.state.board.start()
    yield
    app.state.board.hand_back()
    await app.state.pool.drain(app.state.settings.shutdown_grace)
    await app.state.board.stop()


def create_app(settings: Settings) -> FastAPI:
    """The mixdiff server for ``settings``; raises ``ValueError`` if the core slices do not fit."""
    app = FastAPI(
        title="mixdiff",
        version=package.__version__,
        description="Stable Diffusion on CPUs with a per-step precision schedule. "
        "Errors share one body: {\"error\": {\"message\", \"type\", \"param\", \"code\"}}.",
        lifespan=lifespan,
    )
    metrics = Metrics(endpoints=endpoints(ROUTERS))
    job_store = JobStore(settings.job_ttl, settings.max_jobs_kept)
    app.state.settings, app.state.metrics, app.state.jobs = settings, metrics, job_store
    app.state.pool = WorkerPool(settings, metrics, job_store)
    app.state.board = job_board.board(settings, job_store, app.state.pool, metrics)
    app.state.started = time.time()
    errors.install(app)
    contract.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    for router in ROUTERS:
        app.include_router(router)
    playground.install(app)
    return app
