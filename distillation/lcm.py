"""Latent consistency distillation (``mixdiff distill lcm``): a UNet that draws in 1–8 steps.

The method of "Latent Consistency Models" (Luo et al., 2023), with the model's own FP32
UNet as the teacher. The student, a copy of the teacher, learns the *consistency
function* of the teacher's guided probability-flow ODE: from a point ``x_t`` of a
trajectory, the trajectory's end ``x_0``, written with the boundary condition that
``LCMScheduler`` samples with,

    f(x, t) = c_skip(t) · x + c_out(t) · x̂_0(x, t),   c_skip(0) = 1, c_out(0) = 0

(``x̂_0`` from the UNet's output, ε or v as the model predicts). Each step:

1. noises a training latent ``z_0`` to ``x_t``, ``t`` drawn from the teacher's DDIM
   grid of ``teacher_steps`` steps (LCM's skipping schedule);
2. the teacher takes one DDIM step from ``t`` to ``s = t − T/teacher_steps`` on its
   classifier-free-guided output at scale ``guidance``: ``x_s``;
3. the target is the *target network* (an EMA of the student) at ``(x_s, s)``; the
   student at ``(x_t, t)`` is pulled towards it (mean squared error).

The guidance is distilled into the student, so it runs without the unconditional half
of the batch: half the UNet work of a guided step. The result is a model folder like the
teacher's with the student's UNet, ``LCMScheduler`` over the same noise schedule, and a
``mixdiff.json`` whose defaults (4 steps, no guidance, ``lcm``) make it run right.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.training import (
    GeneratedLatents,
    Images,
    TrainingRun,
    TrainingState,
    embed,
    lr_factor,
)

log = logging.getLogger(__name__)

#: LCMScheduler's boundary condition: ``sigma_data`` and its default ``timestep_scaling``.
SIGMA_DATA, TIMESTEP_SCALING = 0.5, 10.0
#: The teacher folder's parts the student's folder does not copy: its own UNet and what was made from it.
NOT_COPIED = {"unet", "quantized", "scheduler", "mixdiff.json", "README.md", "model_index.json", "distillation.json"}


def boundary(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` at timesteps ``t``, as ``LCMScheduler`` computes them."""
    scaled = t.double() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.float(), c_out.float()


def _column(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, 1, 1, 1)


class NoiseSchedule:
    """The model's training noise schedule (zero terminal SNR included) and the ODE's pieces on it."""

    def __init__(self, scheduler_config, prediction: str):
        from diffusers import DDPMScheduler

        if prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"lcm distills epsilon or v_prediction UNets, not {prediction!r}")
        self.prediction = prediction
        self.alphas = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float()
        self.T = len(self.alphas)

    def grid(self, steps: int) -> torch.Tensor:
        """The teacher's DDIM timesteps of ``steps`` steps, LCM's: ``T/steps − 1``, …, ``T − 1``."""
        if not 1 <= steps <= self.T:
            raise ValueError(f"teacher steps must be within 1..{self.T}, got {steps}")
        return torch.arange(1, steps + 1) * (self.T // steps) - 1

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = _column(self.alphas[t])
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def x0_and_eps(self, x: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean latent and the noise that the UNet's ``output`` at ``(x, t)`` imply."""
        a = _column(self.alphas[t])
        if self.prediction == "v_prediction":
            return a.sqrt() * x - (1 - a).sqrt() * output, (1 - a).sqrt() * x + a.sqrt() * output
        return (x - (1 - a).sqrt() * output) / a.sqrt(), output

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        a = _column(self.alphas[s])
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def consistency(self, unet, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``f(x, t)``: the end of the trajectory through ``x`` at ``t``, as ``unet`` sees it."""
        output = unet(x, t, text, return_dict=False)[0].float()
        c_skip, c_out = boundary(t)
        return _column(c_skip) * x + _column(c_out) * self.x0_and_eps(x, output, t)[0]


@dataclass
class LCMConfig:
    """Latent consistency distillation of a pipeline's UNet (its FP32 self as the teacher)."""

    data: Images | GeneratedLatents | None = None
    data_size: int = 8192
    guidance: float = 5.0
    teacher_steps: int = 50
    train_steps: int = 1500
    batch: int = 16
    lr: float = 1e-4
    warmup: int = 100
    target_ema: float = 0.95
    autocast: bool = True
    work: Path = Path("runs/distill/lcm")
    checkpoint_every: int = 250
    resume: bool = False
    seed: int = 0
    #: what the run did (filled in by ``train``)
    summary: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.data is None:
            raise ValueError("distillation needs training data")
        if self.guidance < 1:
            raise ValueError(f"--guidance must be at least 1 (1: no guidance), got {self.guidance}")
        if not 0 <= self.target_ema < 1:
            raise ValueError(f"--target-ema must be within [0, 1), got {self.target_ema}")
        if self.batch < 1:
            raise ValueError(f"--batch must be at least 1, got {self.batch}")

    def recipe(self) -> dict:
        options = {k: v for k, v in asdict(self).items() if k not in ("data", "summary", "work", "resume")}
        return {
            "method": "latent consistency distillation (LCM), the model's FP32 UNet as the teacher",
            **options,
            "data": self.data.description,
            "loss": "mse(f_student(x_t, t), f_target(x_s, s)), x_s: the teacher's guided DDIM step from x_t",
            "boundary": {"sigma_data": SIGMA_DATA, "timestep_scaling": TIMESTEP_SCALING},
            "optimizer": "AdamW (0.9, 0.999), weight decay 0.01, gradients clipped to norm 1, warm-up then cosine",
            **self.summary,
        }

    def train(self, pipe) -> torch.nn.Module:
        """The student UNet of ``pipe`` (an SD 1.x/2.x pipeline in FP32), distilled."""
        from diffusers.models.attention_processor import AttnProcessor

        if pipe.unet.config.get("addition_embed_type"):
            raise ValueError("lcm distills SD 1.x and 2.x UNets; this one takes added conditions (SDXL)")
        schedule = NoiseSchedule(pipe.scheduler.config, pipe.scheduler.config.get("prediction_type", "epsilon"))
        grid, gap = schedule.grid(self.teacher_steps), schedule.T // self.teacher_steps
        rng = np.random.default_rng(self.seed)
        generator = torch.Generator().manual_seed(self.seed)

        # 1. training latents and their captions' text states, computed once
        start = time.perf_counter()
        latents, captions = self.data.latents(pipe, self.data_size)
        states, empty = embed(pipe, captions), embed(pipe, [""])
        data_seconds = time.perf_counter() - start
        log.info("lcm: %d training latents (%s) in %.0f s", len(latents), self.data.description, data_seconds)

        # 2. teacher, student, target network. Plain attention: on CPU its BF16 backward beats SDPA's.
        teacher = pipe.unet.eval().requires_grad_(False)
        student = copy.deepcopy(teacher)
        student.set_attn_processor(AttnProcessor())
        target = copy.deepcopy(student)
        params = [p.requires_grad_(True) for p in student.parameters()]
        optimizer = torch.optim.AdamW(params, lr=self.lr, betas=(0.9, 0.999), weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, self.warmup, self.train_steps))
        target_params = list(target.parameters())
        state = TrainingState(student, optimizer, scheduler, [p.data for p in target_params], rng, generator)

        # 3. the run: afresh, or from the checkpoint in ``work``
        run = TrainingRun("lcm", state, self.work, total=self.train_steps, checkpoint_every=self.checkpoint_every,
                          resume=self.resume, config=self.recipe())  # fmt: skip

        # 4. the loop
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast)
        for step in range(run.first, self.train_steps):
            idx = torch.from_numpy(rng.integers(0, len(latents), size=self.batch))
            t = grid[torch.from_numpy(rng.integers(0, len(grid), size=self.batch))]
            s = (t - gap).clamp_min(0)
            noise = torch.randn((self.batch, *latents.shape[1:]), generator=generator)
            z0, text = latents[idx], states[idx]
            xt = schedule.add_noise(z0, noise, t)
            with torch.no_grad(), autocast:
                xs = self._teacher_step(teacher, schedule, xt, t, s, text, empty)
                goal = schedule.consistency(target, xs, s, text)
            with autocast:
                loss = F.mse_loss(schedule.consistency(student, xt, t, text), goal)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                torch._foreach_lerp_([p.data for p in target_params], [p.detach() for p in params], 1 - self.target_ema)
            run.step(step + 1, {"loss": round(loss.item(), 7), "lr": scheduler.get_last_lr()[0]})

        student.requires_grad_(False)
        self.summary = run.summary(data_seconds=round(data_seconds, 1))
        return student

    def _teacher_step(self, teacher, schedule: NoiseSchedule, xt, t, s, text, empty) -> torch.Tensor:
        """One DDIM step of the teacher from ``(xt, t)`` to ``s``, on its guided output."""
        if self.guidance == 1:
            output = teacher(xt, t, text, return_dict=False)[0].float()
        else:
            pair = teacher(
                torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([empty.expand_as(text), text]), return_dict=False
            )[0].float()
            uncond, cond = pair.chunk(2)
            output = uncond + self.guidance * (cond - uncond)
        x0, eps = schedule.x0_and_eps(xt, output, t)
        return schedule.ddim_step(x0, eps, s)


def write_student(teacher_folder: Path, student: torch.nn.Module, out: Path, config: LCMConfig, steps: int = 4) -> None:
    """``out``: the teacher's pipeline folder with ``student`` as its UNet, ``LCMScheduler`` over
    the teacher's noise schedule, and a ``mixdiff.json`` whose defaults run it as distilled
    (``steps`` steps, no guidance, ``lcm``); what was done in ``distillation.json``."""
    from diffusers import LCMScheduler

    staged = out.with_name(out.name + ".partial")
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    for item in teacher_folder.iterdir():
        if item.name in NOT_COPIED:
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, staged / item.name)
    student.save_pretrained(staged / "unet", safe_serialization=True)
    scheduler_config = json.loads((teacher_folder / "scheduler" / "scheduler_config.json").read_text())
    LCMScheduler.from_config(scheduler_config, original_inference_steps=config.teacher_steps).save_pretrained(
        staged / "scheduler"
    )
    index = json.loads((teacher_folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    (staged / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    settings = _teacher_settings(teacher_folder)
    settings["defaults"] = {"steps": steps, "guidance_scale": 1.0, "scheduler": "lcm", "precision": "bf16"}
    (staged / "mixdiff.json").write_text(json.dumps(settings) + "\n")
    recipe = {"teacher": teacher_folder.name, **config.recipe()}
    (staged / "distillation.json").write_text(json.dumps(recipe, indent=2, default=str) + "\n")
    staged.rename(out)


def _teacher_settings(folder: Path) -> dict:
    file = folder / "mixdiff.json"
    given = json.loads(file.read_text()) if file.is_file() else {}
    return {k: v for k, v in given.items() if k == "sizes"}
