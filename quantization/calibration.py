"""Calibration data: the UNet's own inputs, captured while the FP32 model denoises.

Static activation scales are only as good as the activations they were measured
on, and a diffusion UNet's activations drift with the timestep. So the inputs are
not synthetic: the FP32 pipeline runs on calibration prompts and a forward
pre-hook on its UNet keeps the inputs of the steps a *sampler* picks:

- ``trajectory``: every step of every run;
- ``uniform`` (Q-Diffusion): timesteps drawn uniformly over ``[0, T)``;
- ``normal`` (PTQ4DM): timesteps drawn from a normal law around ``0.4·T``
  (standard deviation ``0.2·T``), clipped to ``[0, T)``.

A drawn timestep is mapped to the nearest step of the run's schedule; a step drawn
twice is kept twice (it weighs twice in the histograms), so the kept inputs follow
the sampler's law as closely as the schedule's grid allows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from quantization.inputs import UNetInputs

SAMPLERS = ("trajectory", "uniform", "normal")
#: PTQ4DM's normal law, as fractions of the number of training timesteps T.
NORMAL_MEAN, NORMAL_STD = 0.4, 0.2


def draw_steps(
    sampler: str, timesteps: Sequence[float], samples: int, rng: np.random.Generator, num_train_timesteps: int
) -> list[int]:
    """Indices into ``timesteps`` (one run's schedule) of the steps to keep, repeats allowed."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown calibration sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    if sampler == "trajectory":
        return list(range(len(timesteps)))
    if samples < 1:
        raise ValueError(f"samples per prompt must be at least 1, got {samples}")
    T = num_train_timesteps
    if sampler == "uniform":
        drawn = rng.uniform(0, T, samples)
    else:
        drawn = np.clip(rng.normal(NORMAL_MEAN * T, NORMAL_STD * T, samples), 0, T - 1)
    grid = np.asarray(timesteps, dtype=np.float64)
    return [int(np.abs(grid - t).argmin()) for t in drawn]


@torch.no_grad()  # not inference_mode: the captured tensors feed torch.export later
def capture(
    pipe,
    prompts: Sequence[str],
    *,
    sampler: str = "trajectory",
    samples: int = 8,
    steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int = 0,
) -> list[UNetInputs]:
    """Run the FP32 ``pipe`` on each prompt and keep the UNet inputs the sampler picks."""
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    rng = np.random.default_rng(seed)
    captured: list[UNetInputs] = []
    wanted: dict[float, int] = {}

    def hook(module, args, kwargs):
        sample, timestep = args[0], args[1] if len(args) > 1 else kwargs["timestep"]
        repeats = wanted.get(float(timestep), 0)
        if repeats:
            ehs = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
            inputs = UNetInputs.from_call(sample, timestep, ehs, kwargs.get("added_cond_kwargs"))
            captured.extend([inputs] * repeats)
            wanted.pop(float(timestep))  # a multistep scheduler may call twice at one timestep

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i, prompt in enumerate(prompts):
            pipe.scheduler.set_timesteps(steps)
            schedule = [float(t) for t in pipe.scheduler.timesteps]
            picks = draw_steps(sampler, schedule, samples, rng, pipe.scheduler.config.num_train_timesteps)
            wanted.clear()
            for index in picks:
                wanted[schedule[index]] = wanted.get(schedule[index], 0) + 1
            pipe(
                prompt,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=torch.Generator().manual_seed(seed + i),
                output_type="latent",
            )
    finally:
        handle.remove()
    return captured
