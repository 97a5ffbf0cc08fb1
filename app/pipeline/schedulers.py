"""The schedulers a request may name. Each request gets a fresh instance built from
the model's own scheduler config, so prediction type (epsilon or v), the beta schedule
and its timestep spacing carry over, and no state leaks between requests.

The few-step ones sample distilled models: ``lcm`` (latent consistency models, LCM-LoRA,
``mixdiff distill lcm``'s students), ``tcd`` (trajectory consistency distillation,
Hyper-SD) and ``euler_a_trailing``, Euler ancestral with its first step at the last
training timestep, as SD-Turbo and SDXL-Turbo are sampled (with guidance 0).

A model trained on a zero-terminal-SNR schedule (``rescale_betas_zero_snr``) can only
be sampled by schedulers that rescale their betas the same way; the others would
sample a different noise schedule than the model learned, so they are not offered.
"""

from __future__ import annotations

import inspect

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
)

from app.errors import InvalidRequest

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "lms": (LMSDiscreteScheduler, {}),
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
    "euler_a_trailing": (EulerAncestralDiscreteScheduler, {"timestep_spacing": "trailing"}),
}


def available(config) -> list[str]:
    """The schedulers that can sample a model whose scheduler config is ``config``."""
    if not config.get("rescale_betas_zero_snr", False):
        return list(SCHEDULERS)
    return [
        name
        for name, (cls, _) in SCHEDULERS.items()
        if "rescale_betas_zero_snr" in inspect.signature(cls.__init__).parameters
    ]


def make_scheduler(name: str, config):
    """A new scheduler ``name`` configured like the model's ``config``."""
    offered = available(config)
    if name not in offered:
        raise InvalidRequest(f"unknown scheduler {name!r}; available: {', '.join(offered)}", param="scheduler")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)
