"""The JSON shape of a job, shared by ``/generate`` (JSON form) and ``/v1/jobs``."""

from __future__ import annotations

import base64
from dataclasses import asdict

from app.engine.jobs import Job


def job_view(job: Job, *, images: bool = True) -> dict:
    """Everything known about ``job``: what it runs with (seed, size, guidance, scheduler, the
    precision schedule), per-step records, timings, and
    (when completed) the images as base64 PNGs, or (when failed) the error."""
    result = job.result
    view = {
        "id": job.id,
        "object": "job",
        "status": job.status.value,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "seed": job.params.seed,
        "width": job.params.width,
        "height": job.params.height,
        "guidance_scale": job.params.guidance_scale,
        "scheduler": job.params.scheduler,
        "decoder": job.params.decoder,
        "schedule": job.schedule,
        "steps_done": len(job.steps),
        "steps_total": job.params.steps,
        "steps": [asdict(step) for step in job.steps],
        "timings": job.timings(),
        "warnings": result.warnings if result else [],
    }
    if images and result is not None:
        view["images"] = [base64.b64encode(png).decode() for png in result.images]
    if job.error is not None:
        view["error"] = job.error.body()["error"]
    return view
