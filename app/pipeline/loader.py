"""Loading a diffusers pipeline folder (SD 1.x, 2.x, XL) or building the tiny one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from pydantic import TypeAdapter, ValidationError

from app.engine.schedule import PrecisionSpec
from app.pipeline.tiny import build_tiny_pipeline
from app.pipeline.types import DECODERS, DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
from app.settings import TINY_MODEL, model_folder

log = logging.getLogger(__name__)

_FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}
#: A model folder's own mixdiff file: ``{"defaults": {"steps": 50, "guidance_scale": 5.0}, "sizes": [512]}``.
SETTINGS_FILE = "mixdiff.json"
#: A model folder's optional tiny decoder (TAESD-style), beside its VAE.
TINY_DECODER = "vae_tiny"


class ModelLoadError(RuntimeError):
    """The model folder is missing or is not a pipeline mixdiff can run."""


def load_diffusers_pipeline(model: str):
    """``(pipe, family, path or None)`` for a folder, or for ``tiny-random``.

    The embedded default model stands in for itself only when present; a checkout
    without it serves the tiny random pipeline and says so in the log and model info.
    """
    try:
        path = model_folder(model)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    if path is None:
        if model != TINY_MODEL:
            log.warning("embedded default model not found at %s: serving the tiny random-weight pipeline", model)
        return build_tiny_pipeline("sd"), "sd", None
    class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    family = _FAMILIES.get(class_name)
    if family is None:
        raise ModelLoadError(
            f"{path} holds a {class_name}; mixdiff runs {', '.join(_FAMILIES)} (SD 1.x, 2.x and XL)"
        )
    kwargs = {"safety_checker": None, "requires_safety_checker": False} if family == "sd" else {}
    cls = StableDiffusionPipeline if family == "sd" else StableDiffusionXLPipeline
    pipe = cls.from_pretrained(path, local_files_only=True, dtype=torch.float32, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe, family, path


def _model_file(path: Path | None) -> dict:
    """The folder's ``mixdiff.json`` (``{}`` where it has none): ``{"defaults": {...}, "sizes": [...]}``,
    both optional."""
    file = None if path is None else path / SETTINGS_FILE
    if file is None or not file.is_file():
        return {}
    try:
        given = json.loads(file.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(given, dict) or set(given) - {"defaults", "sizes"}:
        raise ModelLoadError(
            f'{file} must be a JSON object with "defaults" and/or "sizes", such as '
            '{"defaults": {"steps": 30, "guidance_scale": 7.5}, "sizes": [512]}'
        )
    return given


def generation_defaults(path: Path | None) -> dict:
    """The steps, guidance scale, precision schedule, scheduler and decoder of a request that
    names none: the ``"defaults"`` of the folder's ``mixdiff.json`` where it has one, mixdiff's
    own (30 steps, guidance 7.5, bf16, ddim, the full VAE) otherwise.

    A model whose images want another guidance (a small or distilled one) says so there, a
    model that ships INT8 artifacts may name the schedule its requests run by default
    (``"precision": {"high": "bf16", "low": "int8", "first": 5, "last": 5}``), and a
    distilled one its scheduler and steps (``"scheduler": "lcm", "steps": 4``). Whether the
    scheduler can sample the model and the decoder exists is checked once it is loaded.
    """
    defaults: dict = {
        "steps": DEFAULT_STEPS,
        "guidance_scale": DEFAULT_GUIDANCE_SCALE,
        "precision": "bf16",
        "scheduler": "ddim",
        "decoder": "full",
    }
    given = _model_file(path).get("defaults", {})
    file = f"{path}/{SETTINGS_FILE}"
    if not isinstance(given, dict) or set(given) - set(defaults):
        raise ModelLoadError(f"{file}: defaults may set only {', '.join(defaults)}")
    steps, guidance = given.get("steps", DEFAULT_STEPS), given.get("guidance_scale", DEFAULT_GUIDANCE_SCALE)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModelLoadError(f"{file}: steps must be a whole number of at least 1, got {steps!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 0 <= guidance <= 50:
        raise ModelLoadError(f"{file}: guidance_scale must be a number from 0 to 50, got {guidance!r}")
    precision = given.get("precision", "bf16")
    try:
        TypeAdapter(PrecisionSpec).validate_python(precision)
    except ValidationError:
        raise ModelLoadError(
            f"{file}: precision must be a precision name, a list of them, or "
            f'{{"high": ..., "low": ..., "first": ..., "last": ...}}, got {precision!r}'
        ) from None
    scheduler, decoder = given.get("scheduler", "ddim"), given.get("decoder", "full")
    if not isinstance(scheduler, str):
        raise ModelLoadError(f"{file}: scheduler must be a scheduler's name, such as \"lcm\", got {scheduler!r}")
    if decoder not in DECODERS:
        raise ModelLoadError(f"{file}: decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    return {
        "steps": steps,
        "guidance_scale": float(guidance),
        "precision": precision,
        "scheduler": scheduler,
        "decoder": decoder,
    }


def load_tiny_decoder(path: Path | None):
    """The folder's tiny decoder (``vae_tiny/``, a diffusers ``AutoencoderTiny``), or None."""
    if path is None or not (path / TINY_DECODER / "config.json").is_file():
        return None
    from diffusers import AutoencoderTiny

    try:
        return AutoencoderTiny.from_pretrained(path / TINY_DECODER, local_files_only=True, dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path / TINY_DECODER} is not an AutoencoderTiny folder: {exc}") from None


def load_int8_decoder(path: Path | None, tiny_decoder):
    """The INT8 build of the folder's tiny decoder (``vae_tiny/int8/``, a
    ``quantization.runtime.PackagedDecoder``), or None where there is none or it is refused
    (damaged, built by another torch or from another decoder: the log says why)."""
    if path is None or tiny_decoder is None:
        return None
    from quantization.runtime import DECODER_ARTIFACT, ArtifactError, load_decoder

    folder = path / TINY_DECODER / DECODER_ARTIFACT
    if not folder.is_dir():
        return None
    try:
        return load_decoder(folder, tiny_decoder, "tiny-int8")
    except ArtifactError as exc:
        log.warning("decoder tiny-int8 unavailable: %s refused: %s (make it again: mixdiff quantize tiny-decoder)",
                    folder, exc)  # fmt: skip
        return None


def model_sizes(path: Path | None, default_size: int) -> list[int] | None:
    """The image sizes (pixels per side, for width and height alike) the model was trained
    for, from the ``"sizes"`` of its ``mixdiff.json``; None where it declares none (any
    multiple of 8 is then served). Its own size must be among them: requests that name no
    size get it."""
    sizes = _model_file(path).get("sizes")
    if sizes is None:
        return None
    file = f"{path}/{SETTINGS_FILE}"
    if (
        not isinstance(sizes, list)
        or not sizes
        or any(isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8 for size in sizes)
    ):
        raise ModelLoadError(f"{file}: sizes must be a list of pixel sizes, multiples of 8, got {sizes!r}")
    if default_size not in sizes:
        raise ModelLoadError(f"{file}: sizes {sizes} must include the model's own size, {default_size}")
    return sorted(set(sizes))
