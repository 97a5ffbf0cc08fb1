"""UNet inputs as the compiled graphs take them, shared by the runtime and the build.

``UNetInputs`` is one UNet call as the denoising loop makes it; ``run_in_batches`` runs
any batch through a graph built for a fixed batch (``BATCH`` unless told);
``TimestepGroups`` maps a timestep to the package that holds its activation scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

#: The batch every artifact's graph is exported and compiled for: one image with classifier-free
#: guidance. (With a dynamic batch dimension, torchao's qlinear fusion fails on UNets with
#: linear projections, SD 2.x and SDXL.) The build functions take another static batch where
#: a benchmark asks for one (batch 1: few-step models without guidance).
BATCH = 2


@dataclass(frozen=True)
class UNetInputs:
    """One UNet call as the denoising loop made it (CFG batch included), in fp32.

    ``timestep`` is always 1-D with one entry per batch item, the form the exported
    graph takes; ``added`` holds SDXL's ``text_embeds`` and ``time_ids``, else is empty.
    """

    sample: torch.Tensor
    timestep: torch.Tensor
    encoder_hidden_states: torch.Tensor
    added: tuple[torch.Tensor, ...] = ()

    @classmethod
    def from_call(cls, sample, timestep, encoder_hidden_states, added_cond_kwargs=None) -> UNetInputs:
        batch = sample.shape[0]
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        added = ()
        if added_cond_kwargs:
            added = (_dense(added_cond_kwargs["text_embeds"]), _dense(added_cond_kwargs["time_ids"]))
        return cls(_dense(sample), _dense(t), _dense(encoder_hidden_states), added)

    def args(self) -> tuple[torch.Tensor, ...]:
        """Positional arguments of the exported UNet graph."""
        return (self.sample, self.timestep, self.encoder_hidden_states, *self.added)

    def added_cond_kwargs(self) -> dict | None:
        """``added`` as diffusers' UNet takes it."""
        return {"text_embeds": self.added[0], "time_ids": self.added[1]} if self.added else None

    @property
    def t(self) -> float:
        return float(self.timestep[0])

    @property
    def batch(self) -> int:
        return self.sample.shape[0]


def _dense(x: torch.Tensor) -> torch.Tensor:
    """fp32 and contiguous: compiled packages assume the strides they were traced with."""
    return x.float().contiguous()


def chunks(args: tuple[torch.Tensor, ...], batch: int = BATCH):
    """``(chunk, n)`` pairs: the arguments cut into batches of exactly ``batch``, the last
    one padded by repeating its last item, and how many items of each are real."""
    total = args[0].shape[0]
    for start in range(0, total, batch):
        chunk = [a[start : start + batch] for a in args]
        n = chunk[0].shape[0]
        if n < batch:
            chunk = [torch.cat([a, a[-1:].expand(batch - n, *a.shape[1:])]) for a in chunk]
        yield tuple(chunk), n


def run_in_batches(fn, args: tuple[torch.Tensor, ...], batch: int = BATCH) -> torch.Tensor:
    """``fn`` (a graph built for a batch of ``batch``) applied to arguments of any batch."""
    outputs = [fn(*chunk)[:n] for chunk, n in chunks(args, batch)]
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


@dataclass
class TimestepGroups:
    """K contiguous ranges of training timesteps, each with its own activation scales.

    Group ``g`` covers ``[bounds[g], bounds[g+1])``; the last one includes ``T``.
    """

    bounds: list[float] = field(default_factory=list)

    @classmethod
    def even(cls, k: int, num_train_timesteps: int) -> TimestepGroups:
        if k < 1:
            raise ValueError(f"timestep groups must be at least 1, got {k}")
        return cls([num_train_timesteps * g / k for g in range(k + 1)])

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def index(self, t: float) -> int:
        for g in range(len(self) - 1):
            if t < self.bounds[g + 1]:
                return g
        return len(self) - 1

    def split(self, inputs: Sequence[UNetInputs]) -> list[list[UNetInputs]]:
        groups: list[list[UNetInputs]] = [[] for _ in range(len(self))]
        for item in inputs:
            groups[self.index(item.t)].append(item)
        return groups
