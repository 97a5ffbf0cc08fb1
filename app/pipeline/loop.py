"""The mixed-precision denoising loop: at each step, the UNet variant the schedule names.

The text encoders encode in ``text_encoder_precision``; the UNet changes precision step by
step; the request's decoder, the VAE or the model's tiny decoder, decodes in ``vae_precision``
(``bf16`` takes a fraction of FP32's time on SD 1.5's VAE: docs/QUANTIZATION.md,
"Speed"), and the tiny decoder's INT8 build (``tiny-int8``) in its own. The initial noise
depends on the seed alone, so images from different schedules are comparable pixel for
pixel.
"""

from __future__ import annotations

import inspect
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from app.errors import InvalidRequest
from app.pipeline.loader import (
    ModelLoadError,
    generation_defaults,
    load_diffusers_pipeline,
    load_int8_decoder,
    load_tiny_decoder,
    model_sizes,
)
from app.pipeline.precision import set_text_encoder_precision, set_vae_precision
from app.pipeline.schedulers import available, make_scheduler
from app.pipeline.types import GenerationParams, GenerationResult, StepCallback, StepRecord, UNetVariant
from app.pipeline.variants import build_variants
from quantization.runtime import decoder_input

log = logging.getLogger(__name__)


def _fp32(embeds: torch.Tensor | None) -> torch.Tensor | None:
    return None if embeds is None else embeds.float()


@dataclass
class ModelInfo:
    name: str
    family: str  # "sd" (1.x, 2.x) or "sdxl"
    path: str | None  # None for the tiny pipeline built in code
    default_size: int  # pixels per side the UNet was trained at
    sizes: list[int] | None  # pixels per side the model serves (its mixdiff.json); None: any multiple of 8
    prediction_type: str  # "epsilon" or "v_prediction"
    max_prompt_tokens: int
    vae_precision: str  # "fp32" or "bf16"
    text_encoder_precision: str  # "fp32" or "bf16"
    defaults: dict  # steps, guidance_scale, precision, scheduler, decoder of a request that names none
    decoders: list[str]  # "full", and "tiny" (and "tiny-int8") where the folder has a tiny decoder (and its INT8 build)
    parameters: dict[str, int] = field(default_factory=dict)  # component -> parameter count
    artifacts: dict[str, dict] = field(default_factory=dict)  # int8 variant -> manifest summary
    unavailable: dict[str, str] = field(default_factory=dict)  # precision -> why it is not offered


class MixedPrecisionPipeline:
    def __init__(self, pipe, variants: dict[str, UNetVariant], info: ModelInfo, decoders: dict | None = None):
        self.pipe = pipe
        self.variants = variants
        self.info = info
        self.decoders = decoders if decoders is not None else {"full": pipe.vae}  # name -> module

    @classmethod
    def load(
        cls,
        model: str,
        precisions: list[str],
        *,
        compile: bool = False,
        fused_attention: bool = True,
        vae_precision: str = "fp32",
        text_encoder_precision: str = "fp32",
    ) -> MixedPrecisionPipeline:
        """Load a pipeline folder (or ``tiny-random``) and build the variants named in ``precisions``."""
        pipe, family, path = load_diffusers_pipeline(model)
        return cls.from_pipe(
            pipe,
            family,
            precisions,
            compile=compile,
            fused_attention=fused_attention,
            path=path,
            vae_precision=vae_precision,
            text_encoder_precision=text_encoder_precision,
        )

    @classmethod
    def from_pipe(
        cls,
        pipe,
        family: str,
        precisions: list[str],
        *,
        compile: bool = False,
        fused_attention: bool = True,
        path: Path | None = None,
        vae_precision: str = "fp32",
        text_encoder_precision: str = "fp32",
    ) -> MixedPrecisionPipeline:
        """Wrap a diffusers pipeline already in memory; ``path`` is where its int8 artifacts and
        tiny decoder live."""
        defaults = generation_defaults(path)  # a bad mixdiff.json fails before minutes of compiling
        default_size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        sizes = model_sizes(path, default_size)
        tiny_decoder = load_tiny_decoder(path)
        int8_decoder = load_int8_decoder(path, tiny_decoder)  # before the tiny decoder moves to vae_precision
        for decoder in (pipe.vae, tiny_decoder):
            if decoder is not None:
                set_vae_precision(decoder, vae_precision)
        decoders = {"full": pipe.vae, "tiny": tiny_decoder, "tiny-int8": int8_decoder}
        decoders = {name: decoder for name, decoder in decoders.items() if decoder is not None}
        if defaults["decoder"] == "tiny-int8" and tiny_decoder is not None:
            if int8_decoder is None:  # refused (the log says why): the same decoder in its own precision
                log.warning("%s/mixdiff.json: default decoder tiny-int8 unavailable; tiny instead", path)
                defaults = {**defaults, "decoder": "tiny"}
            elif sizes != [int8_decoder.image_size[0]] or int8_decoder.image_size[0] != int8_decoder.image_size[1]:
                raise ModelLoadError(
                    f"{path}/mixdiff.json: the default decoder tiny-int8 decodes {int8_decoder.image_size[1]}x"
                    f"{int8_decoder.image_size[0]} images only, so the model's sizes must be "
                    f"[{int8_decoder.image_size[0]}]; got {sizes}"
                )
        if defaults["decoder"] not in decoders:
            raise ModelLoadError(f"{path}/mixdiff.json: its default decoder {defaults['decoder']!r} needs a vae_tiny/")
        if defaults["scheduler"] not in available(pipe.scheduler.config):
            raise ModelLoadError(
                f"{path}/mixdiff.json: scheduler {defaults['scheduler']!r} cannot sample this model; "
                f"it can: {', '.join(available(pipe.scheduler.config))}"
            )
        for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):  # SDXL has two
            if encoder is not None:
                set_text_encoder_precision(encoder, text_encoder_precision)
        variants, unavailable = build_variants(
            pipe, precisions, compile=compile, fused_attention=fused_attention, model_dir=path
        )
        info = ModelInfo(
            name=path.name if path else "tiny-random",
            family=family,
            path=str(path) if path else None,
            default_size=default_size,
            sizes=sizes,
            prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"),
            max_prompt_tokens=pipe.tokenizer.model_max_length,
            vae_precision=vae_precision,
            text_encoder_precision=text_encoder_precision,
            defaults=defaults,
            decoders=list(decoders),
            parameters={
                name: sum(p.numel() for p in module.parameters())
                for name, module in {**pipe.components, "vae_tiny": tiny_decoder}.items()
                if isinstance(module, torch.nn.Module)
            },
            artifacts={name: v.manifest for name, v in variants.items() if hasattr(v, "manifest")},
            unavailable=unavailable,
        )
        return cls(pipe, variants, info, decoders)

    @property
    def precisions(self) -> list[str]:
        return list(self.variants)

    @property
    def schedulers(self) -> list[str]:
        """The schedulers that can sample this model."""
        return available(self.pipe.scheduler.config)

    def warmup(self, steps: int) -> None:
        """Run every variant that needs it ``steps`` times at the default size (compiles, if compiled): one
        generation whose schedule runs them in turn, so the text encoder and the decoder run once, not once
        per variant (a 512x512 decode takes longer than a step). Artifacts are compiled ahead of time and
        need none (``warmed_up``)."""
        cold = [name for name, v in self.variants.items() if not getattr(v, "warmed_up", False)]
        schedule = [name for name in cold for _ in range(steps)]
        if schedule:
            self.generate(GenerationParams(prompt="warm-up", steps=len(schedule)), schedule)

    @torch.inference_mode()
    def generate(
        self, params: GenerationParams, schedule: list[str], on_step: StepCallback | None = None
    ) -> GenerationResult:
        pipe, start = self.pipe, time.perf_counter()
        width = params.width or self.info.default_size
        height = params.height or self.info.default_size
        # 1. check inputs
        if len(schedule) != params.steps:
            raise ValueError(f"schedule has {len(schedule)} entries for {params.steps} steps")
        self._check_sizes(schedule, params.n, width, height)
        if params.decoder not in self.decoders:
            raise InvalidRequest(
                f"decoder {params.decoder!r} is not offered for this model; it has: {', '.join(self.decoders)}",
                param="decoder",
            )
        decoder = self.decoders[params.decoder]
        if hasattr(decoder, "supports") and not decoder.supports(height, width):  # a compiled decoder's one size
            built_h, built_w = decoder.image_size
            raise InvalidRequest(
                f"decoder {params.decoder!r} was built for {built_w}x{built_h} images, not {width}x{height}: "
                "ask for that size or another decoder",
                param="decoder",
            )
        warnings = self._prompt_warnings(params)
        cfg = params.guidance_scale > 1.0

        # 2. encode prompt
        t0 = time.perf_counter()
        text = self._encode(params, cfg, width, height)
        text_encode_seconds = time.perf_counter() - t0

        # 3. prepare timesteps: a fresh scheduler per request
        scheduler = make_scheduler(params.scheduler, pipe.scheduler.config)
        scheduler.set_timesteps(params.steps)
        timesteps = scheduler.timesteps
        generator = torch.Generator("cpu").manual_seed(params.seed)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}

        # 4. prepare latents: depend on the seed and size only, never on the schedule
        shape = (params.n, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma

        # 5. denoising loop. Some schedulers call the UNet more than once per step
        # (PNDM's warm-up): extra calls run at the precision of their step.
        records = []
        for i, t in enumerate(timesteps):
            precision = schedule[i * len(schedule) // len(timesteps)]
            t0 = time.perf_counter()
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise = self.variants[precision](model_input, t, text["hidden"], text["added"])
            if cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + params.guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
            record = StepRecord(index=i, timestep=float(t), precision=precision, seconds=time.perf_counter() - t0)
            records.append(record)
            if on_step is not None:
                on_step(record)

        # 6. decode
        t0 = time.perf_counter()
        images = self._decode(latents, params.decoder)
        vae_decode_seconds = time.perf_counter() - t0
        return GenerationResult(
            images=images,
            seed=params.seed,
            schedule=list(schedule),
            steps=records,
            text_encode_seconds=text_encode_seconds,
            vae_decode_seconds=vae_decode_seconds,
            total_seconds=time.perf_counter() - start,
            warnings=warnings,
        )

    def _check_sizes(self, schedule: list[str], n: int, width: int, height: int) -> None:
        """Variants built for fixed shapes (int8 artifacts) refuse others before any work is done."""
        batch = 2 * n  # classifier-free guidance doubles the UNet batch
        for name in dict.fromkeys(schedule):
            supports = getattr(self.variants[name], "supports", None)
            if supports is not None and not supports(batch, height, width):
                raise InvalidRequest(
                    f"precision {name!r} was built for {self.info.default_size}x{self.info.default_size} images, "
                    f"not {width}x{height}: ask for that size or another precision",
                    param="precision",
                )

    def _prompt_warnings(self, params: GenerationParams) -> list[str]:
        limit = self.info.max_prompt_tokens
        warnings = []
        for field_name in ("prompt", "negative_prompt"):
            text = getattr(params, field_name)
            if text and (tokens := len(self.pipe.tokenizer(text).input_ids)) > limit:
                warnings.append(
                    f"{field_name} is {tokens} tokens; the text encoder reads {limit}, the rest was dropped"
                )
        return warnings

    def _encode(self, params: GenerationParams, cfg: bool, width: int, height: int) -> dict:
        """Text conditioning in FP32, CFG batch already concatenated as ``[uncond, cond]``."""
        pipe = self.pipe
        if self.info.family == "sd":
            cond, uncond = map(
                _fp32, pipe.encode_prompt(params.prompt, "cpu", params.n, cfg, negative_prompt=params.negative_prompt)
            )
            return {"hidden": torch.cat([uncond, cond]) if cfg else cond, "added": None}
        cond, uncond, pooled, uncond_pooled = map(
            _fp32,
            pipe.encode_prompt(
                params.prompt,
                device="cpu",
                num_images_per_prompt=params.n,
                do_classifier_free_guidance=cfg,
                negative_prompt=params.negative_prompt,
            ),
        )
        time_ids = pipe._get_add_time_ids(
            (height, width),
            (0, 0),
            (height, width),
            dtype=cond.dtype,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
        ).repeat(params.n, 1)
        if cfg:
            return {
                "hidden": torch.cat([uncond, cond]),
                "added": {"text_embeds": torch.cat([uncond_pooled, pooled]), "time_ids": torch.cat([time_ids] * 2)},
            }
        return {"hidden": cond, "added": {"text_embeds": pooled, "time_ids": time_ids}}

    def _decode(self, latents: torch.Tensor, decoder: str) -> list[bytes]:
        vae = self.decoders[decoder]
        latents = decoder_input(latents, vae.config)
        pixels = vae.decode(latents.to(vae.dtype), return_dict=False)[0].float()
        pngs = []
        for image in self.pipe.image_processor.postprocess(pixels, output_type="pil"):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return pngs
