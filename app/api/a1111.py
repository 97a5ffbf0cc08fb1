"""AUTOMATIC1111's web UI API (``/sdapi/v1``): the tools that speak it (the ``webuiapi``
client, editor plug-ins, chat front ends) work against mixdiff unchanged.

``txt2img`` maps A1111's body onto jobs: ``cfg_scale`` is the guidance, ``seed: -1`` a
random seed, ``batch_size`` the images of one job and ``n_iter`` the jobs run one after
the other (seed, seed + batch_size, ...), ``sampler_name`` one of the model's schedulers
under A1111's name; mixdiff's ``precision`` may be added. Absent, the size and steps are
the model's own (A1111's 512 px and 50 steps would not fit every model). A1111's
other fields are accepted at their defaults and refused, by name, when they ask for
something mixdiff does not do (hires fix, face restoration, scripts); fields this module
does not know are ignored, as A1111 ignores them. ``progress`` reports the job running
now, ``interrupt`` cancels it (its request then fails with 499: mixdiff has no partial
image to answer with). img2img, extras, upscalers and the rest answer 404 with the list
of what is served.
"""

from __future__ import annotations

import base64
import json
import secrets

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException

from app.api.contract import GENERATION_ERRORS, errors
from app.api.guard import GuardedRoute
from app.api.schemas import Txt2ImgRequest, a1111_samplers
from app.api.submit import JobRequest, endpoint, to_job, wait_for_result
from app.errors import InvalidRequest, NotFound

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"], route_class=GuardedRoute, responses=errors(401))

#: What this family serves, for the 404 of everything else.
SERVED = ("txt2img", "progress", "interrupt", "sd-models", "samplers", "options")


def _scheduler(body: Txt2ImgRequest, schedulers: list[str]) -> str | None:
    """The mixdiff scheduler of A1111's ``sampler_name`` (or the older ``sampler_index``)."""
    name = body.sampler_name or body.sampler_index
    if not name:
        return None
    offered = a1111_samplers(schedulers)
    if name not in offered and name not in offered.values():
        raise InvalidRequest(
            f"unknown sampler {name!r}; this model's samplers: {', '.join(offered)}", param="sampler_name"
        )
    return offered.get(name, name)


def _infotext(body: Txt2ImgRequest, seed: int, width: int, height: int, sampler: str, schedule: list[str]) -> str:
    """A1111's one-line description of an image (what its UI shows under it)."""
    negative = f"\nNegative prompt: {body.negative_prompt}" if body.negative_prompt else ""
    return (
        f"{body.prompt}{negative}\nSteps: {len(schedule)}, Sampler: {sampler}, CFG scale: {body.cfg_scale}, "
        f"Seed: {seed}, Size: {width}x{height}, Precision: {'/'.join(dict.fromkeys(schedule))}"
    )


@router.post("/txt2img", responses=errors(*GENERATION_ERRORS))
async def txt2img(body: Txt2ImgRequest, request: Request) -> dict:
    """Generate images; answers ``{images: [base64 PNG], parameters, info}`` with ``info`` a JSON string."""
    state = request.app.state
    model = state.pool.loaded_model()
    body.refuse_unsupported()
    if body.n_iter > state.settings.max_images:
        raise InvalidRequest(f"n_iter must be at most {state.settings.max_images}, got {body.n_iter}", param="n_iter")
    scheduler = _scheduler(body, model.schedulers)
    seed = secrets.randbelow(2**32) if body.seed < 0 else body.seed
    images, seeds, warnings = [], [], []
    for iteration in range(body.n_iter):
        job_request = JobRequest(
            prompt=body.prompt,
            negative_prompt=body.negative_prompt or None,
            width=body.width,
            height=body.height,
            steps=body.steps,
            guidance_scale=body.cfg_scale,
            seed=seed + iteration * body.batch_size,
            n=body.batch_size,
            scheduler=scheduler,
            precision=body.precision,
            decoder=None,
        )
        params, schedule = to_job(job_request, state.settings, model)
        job = state.pool.submit(endpoint(request), params, schedule)
        result = await wait_for_result(job, request, state.pool)
        images += result.images
        seeds += [params.seed] * params.n  # one generator draws a job's batch: its images share the seed
        warnings += [warning for warning in result.warnings if warning not in warnings]
    labels = {name: label for label, name in a1111_samplers(model.schedulers).items()}
    sampler = labels.get(params.scheduler, params.scheduler)
    infotext = _infotext(body, seed, params.width, params.height, sampler, schedule)
    info = {
        "prompt": body.prompt,
        "all_prompts": [body.prompt] * len(images),
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * len(images),
        "seed": seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(images),
        "subseed_strength": 0,
        "width": params.width,
        "height": params.height,
        "sampler_name": sampler,
        "cfg_scale": params.guidance_scale,
        "steps": params.steps,
        "batch_size": body.batch_size,
        "sd_model_name": model.info["name"],
        "job_timestamp": str(int(job.created)),
        "infotexts": [infotext] * len(images),
        "schedule": schedule,
        "warnings": warnings,
    }
    return {
        "images": [base64.b64encode(png).decode() for png in images],
        "parameters": body.model_dump(),
        "info": json.dumps(info),
    }


def _current(request: Request):
    """The job running now, else the oldest queued one, else None."""
    active = request.app.state.jobs.active()
    running = [job for job in active if job.started is not None]
    return (running or active or [None])[0]


@router.get("/progress")
async def progress(request: Request) -> dict:
    """The job running now: share of its steps done, seconds left (from its own step times)."""
    job = _current(request)
    queued = len(request.app.state.jobs.active())
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None, queued), "current_image": None,
                "textinfo": None}
    done, total = len(job.steps), job.params.steps
    per_step = sum(step.seconds for step in job.steps) / done if done else 0.0
    return {
        "progress": done / total,
        "eta_relative": per_step * (total - done),
        "state": _state(job, queued),
        "current_image": None,
        "textinfo": f"step {done} of {total}, {job.schedule[done] if done < total else 'decoding'}",
    }


def _state(job, queued: int) -> dict:
    return {
        "skipped": False,
        "interrupted": False,
        "job": job.id if job else "",
        "job_count": queued,
        "job_timestamp": str(int(job.created)) if job else "0",
        "job_no": 0,
        "sampling_step": len(job.steps) if job else 0,
        "sampling_steps": job.params.steps if job else 0,
    }


@router.post("/interrupt")
async def interrupt(request: Request) -> dict:
    """Cancel the job running now (its worker is free within one step)."""
    job = _current(request)
    if job is not None:
        request.app.state.pool.cancel(job)
    return {}


@router.get("/sd-models", responses=errors(503))
async def sd_models(request: Request) -> list[dict]:
    """The one model the server serves, in A1111's shape."""
    info = request.app.state.pool.loaded_model().info
    name = info["name"]
    return [{"title": name, "model_name": name, "hash": None, "sha256": None, "filename": info["path"] or name,
             "config": None}]


@router.get("/samplers", responses=errors(503))
async def samplers(request: Request) -> list[dict]:
    """The model's schedulers under A1111's names."""
    schedulers = request.app.state.pool.loaded_model().schedulers
    return [{"name": label, "aliases": [name], "options": {}} for label, name in a1111_samplers(schedulers).items()]


@router.get("/options", responses=errors(503))
async def options(request: Request) -> dict:
    """The settings A1111 clients read: the model, and the sampling defaults."""
    state = request.app.state
    model = state.pool.loaded_model()
    return {
        "sd_model_checkpoint": model.info["name"],
        "samples_format": "png",
        "CLIP_stop_at_last_layers": 1,
        "mixdiff_default_precision": model.info["defaults"]["precision"],
    }


@router.api_route("/{route:path}", methods=["GET", "POST"], include_in_schema=False)
async def not_served(route: str) -> None:
    if route.strip("/") in SERVED:  # a served route, asked with the other method
        raise HTTPException(405)
    raise NotFound(
        f"/sdapi/v1/{route} is not served: mixdiff generates from text; it serves "
        f"{', '.join('/sdapi/v1/' + name for name in SERVED)}",
        param=None,
    )
