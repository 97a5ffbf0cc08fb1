"""Request bodies of the generation routes. Unknown fields are refused (``extra="forbid"``)
so a typo never silently falls back to a default, and numbers are strict (``false`` is
not a seed, ``"10"`` not a step count); bounds that depend on settings and the model
(sizes, steps, images, precision names) are checked in ``app.api.submit`` and written
into the OpenAPI schema by ``app.api.contract``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat

from app.engine.schedule import PrecisionSpec, whole_number
from app.errors import InvalidRequest
from app.pipeline.types import DECODERS

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
        description="ddim, pndm, euler, euler_a, dpmpp, lms, or for few-step models lcm, tcd, euler_a_trailing, "
        "as GET /v1/models lists them for the model; default: its default_scheduler",
    )
    precision: PrecisionSpec | None = None
    decoder: Literal[DECODERS] | None = Field(
        None,
        description="what turns the latents into pixels: the model's VAE (full) or its tiny decoder (tiny: "
        "TAESD-style, several times faster, slightly softer; tiny-int8: the same in INT8, at SD's sizes half its "
        "time, for the model's own image size only), where GET /v1/models lists it; default: the model's",
    )


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


#: AUTOMATIC1111's sampler names of mixdiff's schedulers.
SAMPLER_NAMES = {
    "DDIM": "ddim", "PLMS": "pndm", "Euler": "euler", "Euler a": "euler_a", "DPM++ 2M": "dpmpp", "LMS": "lms",
    "LCM": "lcm", "TCD": "tcd",
}


def a1111_samplers(schedulers: list[str]) -> dict[str, str]:
    """A1111 sampler name -> mixdiff scheduler, for the ``schedulers`` a model can sample."""
    return {label: name for label, name in SAMPLER_NAMES.items() if name in schedulers}

#: A1111 fields mixdiff accepts only at A1111's defaults: field -> (default, what it would ask for).
A1111_UNSUPPORTED = {
    "enable_hr": (False, "hires fix"),
    "restore_faces": (False, "face restoration"),
    "tiling": (False, "tiling"),
    "styles": ([], "saved styles"),
    "subseed_strength": (0, "variation seeds"),
    "script_name": (None, "scripts"),
    "script_args": ([], "scripts"),
    "alwayson_scripts": ({}, "extensions (always-on scripts)"),
    "override_settings": ({}, "settings overrides"),
}


class Txt2ImgRequest(BaseModel):
    """``POST /sdapi/v1/txt2img``: AUTOMATIC1111's body, plus mixdiff's ``precision``. Fields
    not listed here are ignored, as A1111 ignores them."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    width: whole_number() | None = Field(None, description=_SIZE)
    height: whole_number() | None = Field(None, description=_SIZE)
    steps: whole_number(ge=1) | None = Field(None, description="default: the model's (GET /v1/models)")
    cfg_scale: StrictFloat = Field(7.0, ge=0.0, le=50.0)
    seed: whole_number(ge=-1, le=MAX_SEED) = Field(-1, description="-1: a random seed")
    batch_size: whole_number(ge=1) = Field(1, description="images per job, at most the server's max_images")
    n_iter: whole_number(ge=1) = Field(1, description="jobs run one after the other, at most max_images")
    sampler_name: str | None = Field(None, description="A1111's name (GET /sdapi/v1/samplers); default: the server's")
    sampler_index: str | None = Field(None, description="older clients' sampler_name")
    precision: PrecisionSpec | None = None
    enable_hr: StrictBool | None = False
    restore_faces: StrictBool | None = False
    tiling: StrictBool | None = False
    styles: list[str] | None = None
    subseed_strength: StrictFloat | None = 0
    script_name: str | None = None
    script_args: list | None = None
    alwayson_scripts: dict | None = None
    override_settings: dict | None = None

    def refuse_unsupported(self) -> None:
        """``InvalidRequest`` naming the first field that asks for something mixdiff does not do."""
        for name, (default, feature) in A1111_UNSUPPORTED.items():
            value = getattr(self, name)
            if value not in (default, None):
                raise InvalidRequest(f"{name}: {feature} is not supported by mixdiff", param=name)
