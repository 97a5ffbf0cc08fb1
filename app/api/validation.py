"""From a request body to what a worker runs: ``GenerationParams`` and the per-step schedule.

The checks that depend on settings and on the loaded model live here, each with a
message that says what to change.
"""

from __future__ import annotations

import secrets

from app.engine.pool import LoadedModel
from app.engine.schedule import resolve
from app.errors import InvalidRequest
from app.pipeline.types import GenerationParams
from app.settings import Settings


def _size(name: str, value: int | None, settings: Settings, model: LoadedModel) -> int:
    if value is None:  # the model's own size, brought within the configured bounds
        return min(max(int(model.info["default_size"]), settings.min_size), settings.max_size)
    if value % 8:
        raise InvalidRequest(f"{name} must be a multiple of 8, got {value}", param=name)
    if not settings.min_size <= value <= settings.max_size:
        raise InvalidRequest(
            f"{name} must be between {settings.min_size} and {settings.max_size} pixels, got {value}", param=name
        )
    return value


def to_job(
    fields, width: int | None, height: int | None, settings: Settings, model: LoadedModel
) -> tuple[GenerationParams, list[str]]:
    """Check ``fields`` (a ``GenerationFields``) with the size against settings and model."""
    width, height = _size("width", width, settings, model), _size("height", height, settings, model)
    defaults = model.info["defaults"]
    if fields.steps is None:  # the model's own, brought within the configured bound
        steps = min(defaults["steps"], settings.max_steps)
    elif fields.steps > settings.max_steps:
        raise InvalidRequest(f"steps must be at most {settings.max_steps}, got {fields.steps}", param="steps")
    else:
        steps = fields.steps
    if fields.n > settings.max_images:
        raise InvalidRequest(f"n must be at most {settings.max_images}, got {fields.n}", param="n")
    scheduler = fields.scheduler or settings.default_scheduler
    if scheduler not in model.schedulers:
        raise InvalidRequest(
            f"unknown scheduler {scheduler!r}; available: {', '.join(model.schedulers)}", param="scheduler"
        )
    spec = fields.precision if fields.precision is not None else settings.default_precision
    try:
        schedule = resolve(spec, steps, model.precisions)
    except InvalidRequest as exc:
        unavailable = model.info.get("unavailable", {})
        why = [f"{name}: {reason}" for name, reason in unavailable.items() if repr(name) in exc.message]
        if why:
            exc.message = f"{exc.message} ({'; '.join(why)})"
        raise
    params = GenerationParams(
        prompt=fields.prompt,
        negative_prompt=fields.negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=defaults["guidance_scale"] if fields.guidance_scale is None else fields.guidance_scale,
        seed=fields.seed if fields.seed is not None else secrets.randbelow(2**32),
        n=fields.n,
        scheduler=scheduler,
    )
    return params, schedule
