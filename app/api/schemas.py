"""Request bodies of the generation routes. Unknown fields are refused (``extra="forbid"``)
so a typo never silently falls back to a default; bounds that depend on settings
(sizes, steps, images) are checked in ``app.api.submit``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.engine.schedule import PrecisionSpec

MAX_SEED = 2**63 - 1


class GenerationFields(BaseModel):
    """What a diffusion request may set, beyond the prompt and the size."""

    model_config = ConfigDict(extra="forbid")

    negative_prompt: str | None = Field(None, description="what the image should not show (classifier-free guidance)")
    steps: int | None = Field(
        None, ge=1, description="denoising steps (at most the server's max_steps); default: the model's, "
        "as GET /v1/models lists it (30 unless the model folder says otherwise)"
    )
    guidance_scale: float | None = Field(
        None, ge=0.0, le=50.0, description="classifier-free guidance; 1 or less turns it off. Default: the "
        "model's, as GET /v1/models lists it (7.5 unless the model folder says otherwise)"
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="random seed; the same seed gives the same image. Random when absent"
    )
    scheduler: str | None = Field(
        None,
        description="ddim, pndm, euler, euler_a, dpmpp or lms, as GET /v1/models lists them for the model; "
        "default: the server's default_scheduler",
    )
    precision: PrecisionSpec | None = None


class GenerateRequest(GenerationFields):
    """``POST /generate`` and ``POST /v1/jobs``."""

    prompt: str = Field(min_length=1, description="what the image should show")
    width: int | None = Field(None, description="pixels, a multiple of 8; default: the model's size")
    height: int | None = Field(None, description="pixels, a multiple of 8; default: the model's size")
    n: int = Field(1, ge=1, description="images to generate from the same prompt (n > 1 needs a JSON response)")


class ImageGenerationRequest(GenerationFields):
    """``POST /v1/images/generations``: OpenAI's fields, plus mixdiff's as extra fields."""

    prompt: str = Field(min_length=1)
    model: str | None = Field(None, description="ignored: the server serves the one model of GET /v1/models")
    n: int = Field(1, ge=1)
    size: str | None = Field(None, description="'WIDTHxHEIGHT', e.g. '512x512'; default: the model's size")
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json", description="only b64_json: the server does not host images"
    )
    user: str | None = Field(None, description="accepted for compatibility and ignored")
