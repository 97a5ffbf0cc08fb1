"""Plain data that crosses the boundaries of the pipeline: what to generate, what happened.

These are picklable dataclasses: workers send them to the API process, which records
metrics from them; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

#: What may turn latents into pixels: the VAE ("full"), the model's tiny decoder ("tiny", its
#: ``vae_tiny/``) and that decoder in INT8 ("tiny-int8", its ``vae_tiny/int8/`` from ``mixdiff
#: quantize tiny-decoder``); a model offers those its folder has.
DECODERS = ("full", "tiny", "tiny-int8")
#: What a request that names neither gets, unless the model folder's ``mixdiff.json`` says otherwise.
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE_SCALE = 7.5


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    negative_prompt: str | None = None
    width: int | None = None  # pixels; None: the model's default size
    height: int | None = None
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    seed: int = 0
    n: int = 1
    scheduler: str = "ddim"
    decoder: str = "full"  # one of DECODERS


@dataclass(frozen=True)
class StepRecord:
    """One denoising step as it ran."""

    index: int
    timestep: float
    precision: str
    seconds: float


@dataclass
class GenerationResult:
    images: list[bytes]  # PNG-encoded, one per image
    seed: int
    schedule: list[str]  # resolved precision per step
    steps: list[StepRecord] = field(default_factory=list)
    text_encode_seconds: float = 0.0
    vae_decode_seconds: float = 0.0
    total_seconds: float = 0.0  # inside the worker: encode + steps + decode
    warnings: list[str] = field(default_factory=list)  # e.g. "prompt truncated to 77 tokens"


#: Called after every denoising step; raising (``Cancelled``, ``Timeout``) stops the loop.
StepCallback = Callable[[StepRecord], None]


class UNetVariant(Protocol):
    """One way to run the UNet: fp32, bf16 (eager or compiled), int8 (from an artifact).

    Takes and returns fp32 tensors; any casting is the variant's own business, so the
    denoising loop never changes when a variant is added.

    Two attributes are optional, and the loop reads them where a variant has them:
    ``supports(batch, height, width)``, False for inputs the variant cannot run (an
    artifact's fixed latent size), checked before a generation starts; and ``warmed_up``,
    True where the first call is as fast as the next (compiled ahead of time), so warming up
    skips it.
    """

    precision: str

    def __call__(
        self,
        sample: Any,
        timestep: Any,
        encoder_hidden_states: Any,
        added_cond_kwargs: dict[str, Any] | None = None,
    ) -> Any: ...
