"""All of mixdiff's settings, in one place.

Every field is an environment variable ``MIXDIFF_<NAME>`` and a ``mixdiff serve``
flag ``--<name-with-dashes>``; the description says the trade-off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The embedded default model shipped in the repository (diffusers folder format).
DEFAULT_MODEL = REPO_ROOT / "models" / "mixdiff-shapes"
#: The name that selects a tiny random-weight pipeline built in code (tests, smoke runs).
TINY_MODEL = "tiny-random"


def model_folder(model: str) -> Path | None:
    """The pipeline folder ``model`` names, or None for the tiny random pipeline: asked for
    by name, or standing in for the embedded default model where a checkout lacks it.
    Anything else without a ``model_index.json`` is refused with ``ValueError``."""
    if model == TINY_MODEL:
        return None
    path = Path(model)
    if (path / "model_index.json").is_file():
        return path
    if path == DEFAULT_MODEL:
        return None
    raise ValueError(f"{model!r} is not a diffusers pipeline folder (no model_index.json in it)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIXDIFF_", extra="forbid")

    # -- network ---------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 exposes the server beyond this host")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one)")
    api_key: str | None = Field(
        None,
        description="when set, every route but /health/* and /metrics needs 'Authorization: Bearer <key>'",
    )

    # -- model -----------------------------------------------------------------------------
    model: str = Field(
        str(DEFAULT_MODEL),
        description=f"diffusers pipeline folder (SD 1.x, 2.x or XL), or '{TINY_MODEL}' for a tiny random-weight "
        "pipeline built in code (images are noise; for tests and smoke runs)",
    )
    precisions: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["fp32", "bf16", "*"],
        description="UNet variants each worker builds: fp32, bf16, and artifacts of the model's quantized/ folder "
        "by name, '*' for all of them; a named artifact the model lacks is skipped with a warning. Fewer "
        "variants load faster and use less memory (comma-separated or a JSON list)",
    )
    default_precision: str | None = Field(
        None,
        description="precision of requests that name none; unset: the model's own default schedule (its "
        "mixdiff.json) where the workers offer its precisions, else bf16",
    )
    compile: bool = Field(
        False,
        description="torch.compile the fp32/bf16 UNets: faster steps for minutes of compilation at worker "
        "start-up (how much faster depends on the CPU: see Speed in docs/QUANTIZATION.md)",
    )
    fused_attention: bool = Field(
        True,
        description="run the bf16 UNet's attention with mixdiff's attention op (kernels/: fused kernels in AMX "
        "tiles on a CPU with AMX, in AVX-512 BF16 on one without; faster than SDPA at SD's sizes: "
        "docs/KERNELS.md) rather than PyTorch's SDPA. int8 artifacts have theirs built in",
    )
    default_scheduler: str | None = Field(
        None,
        description="scheduler of requests that name none; unset: the model's own (its mixdiff.json, so a "
        "distilled model samples as it was distilled), else ddim",
    )
    vae_precision: Literal["fp32", "bf16"] = Field(
        "bf16",
        description="what the VAE decodes images in: bf16 takes a fraction of fp32's time "
        "(see Speed in docs/QUANTIZATION.md)",
    )
    text_encoder_precision: Literal["fp32", "bf16"] = Field(
        "bf16",
        description="what the text encoders encode prompts in: bf16 takes under half of fp32's time, which "
        "counts at few steps (docs/FEW_STEPS.md)",
    )

    # -- workers ---------------------------------------------------------------------------
    workers: int = Field(1, ge=1, description="worker processes; each holds every variant of the model in memory")
    cores_per_worker: int | None = Field(
        None,
        ge=1,
        description="physical cores pinned to each worker (torch threads = this). Default: the cores this "
        "process may use, divided evenly between the workers. More cores speed one image up; more workers "
        "serve more images at once",
    )
    first_core: int = Field(0, ge=0, description="index (among the usable cores) of the first core given to worker 0")
    warmup_steps: int = Field(1, ge=0, description="denoising steps each worker runs per variant before it is ready")

    # -- admission -------------------------------------------------------------------------
    queue_size: int = Field(
        8,
        ge=0,
        description="requests that may wait for a worker; beyond it clients get 429. A small queue refuses "
        "clients sooner instead of making them wait",
    )
    request_timeout: float = Field(
        600.0, gt=0, description="seconds from admission until a request fails with 504 (queue wait included)"
    )
    job_ttl: float = Field(3600.0, gt=0, description="seconds a finished job and its images are kept for GET /v1/jobs")
    job_store: str = Field(
        "memory",
        pattern=r"^(memory|rediss?://\S+)$",
        description="where async jobs live: 'memory' (this process; lost when it stops) or a Redis URL "
        "(redis://host:6379/0) shared by replicas: any replica answers for any job, a draining replica hands its "
        "queued jobs to the others, and the jobs of one that dies are taken over (docs/API.md, Jobs across replicas)",
    )
    job_lease: float = Field(
        10.0,
        gt=0,
        description="with a Redis job store: seconds without a heartbeat after which a replica counts as dead, its "
        "running job fails and its queued jobs go to the others",
    )
    max_jobs_kept: int = Field(256, ge=1, description="finished jobs kept at most; the oldest go first")
    shutdown_grace: float = Field(
        120.0, ge=0, description="seconds SIGTERM waits for running work before the workers are killed"
    )

    # -- request bounds --------------------------------------------------------------------
    any_size: bool = Field(
        False,
        description="serve any width/height (a multiple of 8 within min_size..max_size) even where the model "
        "declares the sizes it was trained for (its mixdiff.json 'sizes'): other sizes give poor images and take "
        "the square of the size in time",
    )
    min_size: int = Field(64, ge=8, description="smallest width/height in pixels")
    max_size: int = Field(1024, ge=8, description="largest width/height in pixels; memory grows with its square")
    max_steps: int = Field(100, ge=1, description="most denoising steps a request may ask for")
    max_images: int = Field(4, ge=1, description="most images one request may ask for (n)")
    max_body_bytes: int = Field(65536, ge=1024, description="largest request body accepted; larger ones get 413")

    log_level: str = Field("info", description="log level of the server and its workers")

    @field_validator("precisions", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        """``MIXDIFF_PRECISIONS=fp32,bf16`` or a JSON list, ``["fp32", "bf16"]``."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
