"""The seam every API family goes through to run a job.

A family maps its body onto a ``JobRequest``; ``to_job`` checks it against the
settings and the loaded model and makes it what a worker runs (``GenerationParams``
and the per-step schedule), each check with a message that says what to change. A
family that answers with the images waits for them with ``wait_for_result``. The
family is its router's tag: the ``endpoint`` label of the metrics, taken from the
route that serves the request (``endpoint``) and, for the series exported before any
request, from the registered routers (``endpoints``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, fields

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from app.api.schemas import GenerateRequest, GenerationFields, ImageGenerationRequest, Txt2ImgRequest
from app.engine.jobs import Job
from app.engine.pool import LoadedModel, WorkerPool
from app.engine.schedule import PrecisionSpec, precisions_named, resolve
from app.errors import Cancelled, InvalidRequest
from app.pipeline.types import GenerationParams, GenerationResult
from app.settings import Settings

#: Seconds between two checks that the client is still connected.
DISCONNECT_POLL = 0.25


@dataclass(frozen=True)
class JobRequest:
    """What a request of any family asks of a job; ``None`` leaves a value to the model or the settings."""

    prompt: str
    negative_prompt: str | None
    width: int | None
    height: int | None
    steps: int | None
    guidance_scale: float | None
    seed: int | None
    n: int
    scheduler: str | None
    precision: PrecisionSpec | None
    decoder: str | None

    @classmethod
    def of(cls, body: GenerateRequest | ImageGenerationRequest, width: int | None, height: int | None) -> JobRequest:
        """The job ``body`` asks for: its fields of the same names, and the size its family spells its own way."""
        common = (field.name for field in fields(cls) if field.name not in ("width", "height"))
        return cls(width=width, height=height, **{name: getattr(body, name) for name in common})


def served_sizes(settings: Settings, model: LoadedModel) -> list[int] | None:
    """The widths and heights a request may ask for: the model's declared sizes within the
    configured bounds, or None for any multiple of 8 within them (no sizes declared, or ``any_size``)."""
    sizes = model.info.get("sizes")
    if sizes is None or settings.any_size:
        return None
    return [size for size in sizes if settings.min_size <= size <= settings.max_size]


def _size(name: str, value: int | None, settings: Settings, model: LoadedModel) -> int:
    if value is None:  # the model's own size, brought within the configured bounds
        return min(max(int(model.info["default_size"]), settings.min_size), settings.max_size)
    sizes = served_sizes(settings, model)
    if sizes is not None and value not in sizes:
        raise InvalidRequest(
            f"{name} must be one of the sizes this model was trained for, {', '.join(map(str, sizes))} "
            f"(other sizes draw poorly), got {value}",
            param=name,
        )
    if value % 8:
        raise InvalidRequest(f"{name} must be a multiple of 8, got {value}", param=name)
    if not settings.min_size <= value <= settings.max_size:
        raise InvalidRequest(
            f"{name} must be between {settings.min_size} and {settings.max_size} pixels, got {value}", param=name
        )
    return value


def default_precision(settings: Settings, model: LoadedModel) -> PrecisionSpec:
    """The schedule of a request that names none: the settings', else the model's own where the
    workers offer every precision it names, else bf16 (or, where bf16 is not loaded, the first
    precision loaded)."""
    if settings.default_precision is not None:
        return settings.default_precision
    spec = TypeAdapter(PrecisionSpec).validate_python(model.info["defaults"]["precision"])
    if not precisions_named(spec) <= set(model.precisions):
        return "bf16" if "bf16" in model.precisions else model.precisions[0]
    return spec


def default_scheduler(settings: Settings, model: LoadedModel) -> str:
    """The scheduler of a request that names none: the settings', else the model's own."""
    return settings.default_scheduler or model.info["defaults"]["scheduler"]


def _steps(job: JobRequest, settings: Settings, model: LoadedModel) -> int:
    """The request's step count: as asked, as many as its per-step precision list, or the model's own."""
    if isinstance(job.precision, list):
        if job.steps is not None:
            raise InvalidRequest(
                f"a per-step precision list sets the step count itself ({len(job.precision)}): leave out steps",
                param="steps",
            )
        if len(job.precision) > settings.max_steps:
            raise InvalidRequest(
                f"precision lists {len(job.precision)} steps, more than max_steps={settings.max_steps}",
                param="precision",
            )
        return len(job.precision)
    if job.steps is None:  # the model's own, brought within the configured bound
        return min(model.info["defaults"]["steps"], settings.max_steps)
    if job.steps > settings.max_steps:
        raise InvalidRequest(f"steps must be at most {settings.max_steps}, got {job.steps}", param="steps")
    return job.steps


def to_job(job: JobRequest, settings: Settings, model: LoadedModel) -> tuple[GenerationParams, list[str]]:
    """Check ``job`` against settings and model; what a worker runs."""
    width, height = _size("width", job.width, settings, model), _size("height", job.height, settings, model)
    defaults = model.info["defaults"]
    steps = _steps(job, settings, model)
    if job.n > settings.max_images:
        raise InvalidRequest(f"n must be at most {settings.max_images}, got {job.n}", param="n")
    scheduler = job.scheduler or default_scheduler(settings, model)
    if scheduler not in model.schedulers:
        raise InvalidRequest(
            f"unknown scheduler {scheduler!r}; available: {', '.join(model.schedulers)}", param="scheduler"
        )
    decoder = job.decoder or defaults["decoder"]
    if decoder not in model.info["decoders"]:
        raise InvalidRequest(
            f"decoder {decoder!r} is not offered for this model; it has: {', '.join(model.info['decoders'])}",
            param="decoder",
        )
    spec = job.precision if job.precision is not None else default_precision(settings, model)
    schedule = resolve(spec, steps, model.precisions, model.info.get("unavailable"))
    params = GenerationParams(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=defaults["guidance_scale"] if job.guidance_scale is None else job.guidance_scale,
        seed=job.seed if job.seed is not None else secrets.randbelow(2**32),
        n=job.n,
        scheduler=scheduler,
        decoder=decoder,
    )
    return params, schedule


async def wait_for_result(job: Job, request: Request, pool: WorkerPool) -> GenerationResult:
    """The job's result, or its error raised; cancels the job if the client disconnects."""
    done = asyncio.ensure_future(job.wait())
    try:
        while not job.done:
            await asyncio.wait({done}, timeout=DISCONNECT_POLL)
            if not job.done and await request.is_disconnected():
                pool.cancel(job)
                raise Cancelled("the client disconnected")
    finally:
        done.cancel()
    if job.error is not None:
        raise job.error
    return job.result


def endpoint(request: Request) -> str:
    """The family of the route serving ``request``: the ``endpoint`` label of its job."""
    return request.scope["route"].tags[0]


def _admits_jobs(route: APIRoute) -> bool:
    body = route.body_field.field_info.annotation if route.body_field is not None else None
    return isinstance(body, type) and issubclass(body, (GenerationFields, Txt2ImgRequest))


def endpoints(routers: Iterable[APIRouter]) -> list[str]:
    """The families of ``routers``, in order: the tags of their routes whose body asks for a job."""
    return list(
        dict.fromkeys(
            route.tags[0]
            for router in routers
            for route in router.routes
            if isinstance(route, APIRoute) and _admits_jobs(route)
        )
    )
