"""The schedulers a request may name. Each request gets a fresh instance built from
the model's own scheduler config, so prediction type (epsilon or v) and the beta
schedule carry over, and no state leaks between requests."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "lms": (LMSDiscreteScheduler, {}),
}


def make_scheduler(name: str, config):
    """A new scheduler ``name`` configured like the model's ``config``."""
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)
