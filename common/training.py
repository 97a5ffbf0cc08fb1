"""What the offline training runs share (``mixdiff quantize qat``, ``mixdiff distill``):
their data sources, learning-rate law, checkpoints and loss log.

Training latents come from images with captions, encoded by the model's own VAE and
text encoder (``Images``, ``ImageFolder``), or, data-free, from latents the FP32 model
generates from prompts (``GeneratedLatents``). A ``TrainingRun`` writes a line per step
to ``loss.jsonl`` and a ``TrainingState`` checkpoint every so often; resuming restores
every random draw, so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CHECKPOINT = "checkpoint.pt"
LOSS_LOG = "loss.jsonl"


class Images:
    """Images with captions from a function ``load(n) -> (uint8 images (n, h, w, 3), captions)``."""

    def __init__(self, load: Callable[[int], tuple[np.ndarray, list[str]]], description: str):
        self.load, self.description = load, description

    def latents(self, pipe, n: int) -> tuple[torch.Tensor, list[str]]:
        images, captions = self.load(n)
        return encode_images(pipe, images), list(captions)

    def captions(self, n: int) -> list[str]:
        """The captions of the first ``n`` examples."""
        return list(self.load(n)[1])


class ImageFolder(Images):
    """A folder of images, each with its caption in a ``.txt`` file of the same name; checked
    when made, so a missing caption fails before any work is done."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"training data folder {folder} does not exist")
        self.pairs = []
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            text = image.with_suffix(".txt")
            if not text.is_file():
                raise ValueError(f"image {image.name} in {folder} has no caption file {text.name}")
            caption = text.read_text().strip()
            if not caption:
                raise ValueError(f"caption file {text.name} in {folder} is empty")
            self.pairs.append((image, caption))
        if not self.pairs:
            raise ValueError(f"training data folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        super().__init__(self._load, f"{len(self.pairs)} images with captions from {folder.name}/")
        self.size: int | None = None  # pixels per side, set by ``latents`` from the model

    def _load(self, n: int) -> tuple[np.ndarray, list[str]]:
        from PIL import Image

        chosen = [self.pairs[i % len(self.pairs)] for i in range(n)]
        images = []
        for path, _ in chosen:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)))
        return np.stack(images), [caption for _, caption in chosen]

    def latents(self, pipe, n: int) -> tuple[torch.Tensor, list[str]]:
        self.size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        return super().latents(pipe, n)

    def captions(self, n: int) -> list[str]:
        return [self.pairs[i % len(self.pairs)][1] for i in range(n)]


class GeneratedLatents:
    """Data-free: the latents the FP32 pipeline itself generates from ``prompts`` (cycled),
    one seed each."""

    def __init__(self, prompts: Sequence[str], steps: int = 50, guidance_scale: float = 5.0, seed: int = 0):
        if not prompts:
            raise ValueError("data-free training needs at least one prompt")
        self.prompts, self.steps, self.guidance_scale, self.seed = list(prompts), steps, guidance_scale, seed
        self.description = f"latents the FP32 model generated from {len(self.prompts)} prompts, {steps} steps"

    def captions(self, n: int) -> list[str]:
        """The prompts of the first ``n`` latents."""
        return [self.prompts[i % len(self.prompts)] for i in range(n)]

    @torch.no_grad()
    def latents(self, pipe, n: int, batch: int = 16) -> tuple[torch.Tensor, list[str]]:
        captions = self.captions(n)
        out = []
        for start in range(0, n, batch):
            chunk = captions[start : start + batch]
            generators = [torch.Generator().manual_seed(self.seed + start + i) for i in range(len(chunk))]
            result = pipe(
                chunk,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                generator=generators,
                output_type="latent",
            )
            out.append(result.images.float())
            log.info("generated %d/%d training latents", min(start + batch, n), n)
        return torch.cat(out), captions


def encode_images(pipe, images: np.ndarray, batch: int = 64) -> torch.Tensor:
    """Scaled latent means of uint8 ``images`` (n, h, w, 3), as the UNet sees them."""
    expected = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if images.shape[1:3] != (expected, expected):
        raise ValueError(
            f"training images are {images.shape[2]}x{images.shape[1]} px; this model draws {expected}x{expected}"
        )
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            out.append(pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor)
    return torch.cat(out).float()


@torch.no_grad()
def embed(pipe, captions: Sequence[str], batch: int = 256) -> torch.Tensor:
    """Text-encoder states of ``captions``, as the pipeline computes them."""
    return torch.cat(
        [pipe.encode_prompt(list(captions[i : i + batch]), "cpu", 1, False)[0] for i in range(0, len(captions), batch)]
    ).float()



def lr_factor(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` x the peak rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))



def truncate_log(loss_log: Path, step: int) -> None:
    """Keep the loss log's lines up to ``step``."""
    if loss_log.is_file():
        lines = [line for line in loss_log.read_text().splitlines() if json.loads(line)["step"] <= step]
        loss_log.write_text("".join(line + "\n" for line in lines))


def last_record(loss_log: Path) -> dict | None:
    """The last line of the loss log."""
    lines = loss_log.read_text().splitlines() if loss_log.is_file() else []
    return json.loads(lines[-1]) if lines else None


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class TrainingState:
    """Everything a training run carries from one step to the next, saved in a checkpoint."""

    model: torch.nn.Module  # what trains
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: list[torch.Tensor] | None
    rng: np.random.Generator  # batches, caption dropout, timesteps
    generator: torch.Generator  # noise

    def save(self, path: Path, step: int, seconds: float, config: dict) -> None:
        """Write the state after ``step`` to ``path`` (whole or not at all)."""
        staged = path.with_suffix(".tmp")
        torch.save(
            {
                "step": step,
                "seconds": seconds,
                "config": config,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema,
                "rng": self.rng.bit_generator.state,
                "generator": self.generator.get_state(),
            },
            staged,
        )
        staged.replace(path)

    def load(self, path: Path, config: dict) -> tuple[int, float]:
        """Restore the state saved at ``path`` by a run of the same ``config``; the step it was
        saved after and the seconds trained until then."""
        if not path.is_file():
            raise ValueError(f"--resume: no checkpoint {path}; run without --resume to start anew")
        saved = torch.load(path, weights_only=False)
        keys = {*config, *saved["config"]} - {"checkpoint_every"}
        changed = sorted(k for k in keys if config.get(k) != saved["config"].get(k))
        if changed:
            differences = ", ".join(f"{k} {saved['config'].get(k)!r} -> {config.get(k)!r}" for k in changed)
            raise ValueError(f"--resume: {path} was saved by a run with other options ({differences}); "
                             "resume with the same options, or run without --resume to start anew")  # fmt: skip
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None and saved["ema"] is not None:
            for e, value in zip(self.ema, saved["ema"]):
                e.copy_(value)
        self.rng.bit_generator.state = saved["rng"]
        self.generator.set_state(saved["generator"])
        return saved["step"], saved["seconds"]




class TrainingRun:
    """A training run in its ``work`` folder: started afresh or resumed from the checkpoint there,
    a loss-log line per step, progress with an ETA every fiftieth of the run, a checkpoint (with the
    run's ``config``) every ``checkpoint_every`` steps, and what it cost."""

    def __init__(self, name: str, state: TrainingState, work: Path, *, total: int, checkpoint_every: int,
                 resume: bool, config: dict):  # fmt: skip
        work.mkdir(parents=True, exist_ok=True)
        self.name, self.state, self.total, self.checkpoint_every = name, state, total, checkpoint_every
        self.config = config
        self.checkpoint, self.loss_log = work / CHECKPOINT, work / LOSS_LOG
        self.first, self.seconds_before = 0, 0.0
        if resume:
            self.first, self.seconds_before = state.load(self.checkpoint, config)
            truncate_log(self.loss_log, self.first)  # steps logged after the checkpoint are run again
            log.info("%s: resumed at step %d from %s", name, self.first, self.checkpoint)
        elif self.loss_log.exists():
            self.loss_log.unlink()
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds trained, those before a resume included."""
        return self.seconds_before + time.perf_counter() - self.started

    def step(self, done: int, values: dict[str, float]) -> None:
        """Record step ``done`` (its loss terms and learning rate ``values``); checkpoint it when one is due."""
        record = {"step": done, **values, "seconds": round(self.seconds, 2)}
        with self.loss_log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if done % max(1, self.total // 50) == 0 or done == self.total:
            eta = (time.perf_counter() - self.started) / (done - self.first) * (self.total - done)
            shown = "  ".join(f"{k} {v:.3g}" for k, v in values.items())
            log.info("%s %5d/%d  %s  %s elapsed, eta %s", self.name, done, self.total, shown, clock(self.seconds),
                     clock(eta))  # fmt: skip
        if done % self.checkpoint_every == 0 and done < self.total:
            self.state.save(self.checkpoint, done, self.seconds, self.config)

    def summary(self, **extra) -> dict:
        """What the run cost, and its last logged step."""
        return {
            "train_seconds": round(self.seconds, 1),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            **extra,
            "last_step": last_record(self.loss_log),
        }
