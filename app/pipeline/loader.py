"""Loading a diffusers pipeline folder (SD 1.x, 2.x, XL) or building the tiny one."""

from __future__ import annotations

import json
import logging

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from app.pipeline.tiny import build_tiny_pipeline
from app.settings import TINY_MODEL, model_folder

log = logging.getLogger(__name__)

_FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}


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
