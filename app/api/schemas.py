"""Request bodies of the generation routes. Unknown fields are refused (``extra="forbid"``)
so a typo never silently falls back to a default, and numbers are strict (``false`` is
not a seed, ``"10"`` not a step count); bounds that depend on settings and the model
(sizes, steps, images, precision names) are checked in ``app.api.submit`` and written
into the OpenAPI schema by ``app.api.contract``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat

from app.engine.schedule import PrecisionSpec, whole_number

MAX_SEED = 2**63 - 1
#: Longest prompt or negative prompt, in characters: far beyond what a text encoder reads
#: (77 tokens), and short enough that a body of two stays under ``max_body_bytes``' default.
MAX_PROMPT_CHARS = 2000
#: A prompt must say something: at least one character that is not white space.
_NOT_BLANK = r"\S"


def prompt_field(**kwargs):
    return Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=_NOT_BLANK, **kwargs)


class GenerationFields(BaseModel):
    """What a diffusion request may set, beyond the prompt and the size."""

    model_config = ConfigDict(extra="forbid")

    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="what the image should not show (classifier-free guidance)"
    )
    steps: whole_number(ge=1) | None = Field(
        None, description="denoising steps (at most the server's max_steps); default: the model's, "
        "as GET /v1/models lists it (30 unless the model folder says otherwise)"
    )
    guidance_scale: StrictFloat | None = Field(
        None, ge=0.0, le=50.0, description="classifier-free guidance; 1 or less turns it off. Default: the "
        "model's, as GET /v1/models lists it (7.5 unless the model folder says otherwise)"
    )
    seed: whole_number(ge=0, le=MAX_SEED) | None = Field(
        None, description="random seed; the same seed gives the same image. Random when absent"
    )
    scheduler: str | None = Field(
        None,
        description="ddim, pndm, euler, euler_a, dpmpp or lms, as GET /v1/models lists them for the model; "
        "default: the server's default_scheduler",
    )
    precision: PrecisionSpec | None = None


_SIZE = "pixels, a multiple of 8, one of the model's sizes where it declares them (GET /v1/models); default: its own"


class GenerateRequest(GenerationFields):
    """``POST /generate`` and ``POST /v1/jobs``."""

    prompt: str = prompt_field(description="what the image should show")
    width: whole_number() | None = Field(None, description=_SIZE)
    height: whole_number() | None = Field(None, description=_SIZE)
    n: whole_number(ge=1) = Field(
        1, description="images to generate from the same prompt (n > 1 answers JSON: a PNG holds one image)"
    )


class ImageGenerationRequest(GenerationFields):
    """``POST /v1/images/generations``: OpenAI's fields, plus mixdiff's as extra fields."""

    prompt: str = prompt_field()
    model: str | None = Field(None, description="ignored: the server serves the one model of GET /v1/models")
    n: whole_number(ge=1) = Field(1)
    size: str | None = Field(None, description="'WIDTHxHEIGHT', e.g. '512x512'; default: the model's size")
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json", description="only b64_json: the server does not host images ('url' answers 400)"
    )
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] | None = Field(
        None, description="accepted as OpenAI documents it and ignored: steps and precision set the quality here"
    )
    style: Literal["vivid", "natural"] | None = Field(None, description="accepted as OpenAI documents it and ignored")
    user: str | None = Field(None, description="accepted for compatibility and ignored")
