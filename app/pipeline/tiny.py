"""Tiny random-weight Stable Diffusion pipelines built in code.

They have the real architecture (cross-attention UNet, KL VAE, CLIP text encoder,
SDXL's second encoder and micro-conditioning) at a width that runs a step in
milliseconds, as diffusers' own tests build them. Tests use them, and the server
serves one when asked for the model ``tiny-random``: its images are noise.
"""

from __future__ import annotations

import math
import tempfile

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from common.tokenizer import write_clip_tokenizer

#: Pixels per side of a tiny pipeline's default image.
TINY_SIZE = 64
_WORDS = "a an the of on in with and photo painting small large red green blue yellow white black circle square " \
    "triangle star cat dog house tree sky background top bottom left right center".split()


def clip_tokenizer():
    """A CLIP tokenizer over a few dozen common caption words (written to a temporary folder, loaded, removed)."""
    with tempfile.TemporaryDirectory(prefix="mixdiff-tokenizer-") as directory:
        return write_clip_tokenizer(_WORDS, directory)


def clip_text_config(
    tokenizer, *, hidden_size: int = 32, intermediate_size: int = 64, heads: int = 4, layers: int = 2, **extra
) -> CLIPTextConfig:
    """A CLIP text encoder's config for ``tokenizer``: tiny by default; pass CLIP-L's sizes for SD 1.5's."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=tokenizer.model_max_length,
        **extra,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=TINY_SIZE,
    )


def tiny_decoder(vae_scale_factor: int, *, seed: int = 0) -> AutoencoderTiny:
    """A TAESD-style tiny decoder (random weights) for latents ``vae_scale_factor`` times smaller
    than the image: one level per halving, and one more."""
    torch.manual_seed(seed)
    levels = int(math.log2(vae_scale_factor)) + 1
    return AutoencoderTiny(
        encoder_block_out_channels=(16,) * levels,
        decoder_block_out_channels=(16,) * levels,
        num_encoder_blocks=(1,) * levels,
        num_decoder_blocks=(1,) * levels,
        latent_channels=4,
    )


def sd_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """DDIM over SD 1.x's scaled-linear noise schedule."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def build_tiny_pipeline(family: str = "sd", *, seed: int = 0, prediction_type: str = "epsilon"):
    """A tiny StableDiffusionPipeline (``family="sd"``) or StableDiffusionXLPipeline (``"sdxl"``), fp32, eval mode."""
    if family not in ("sd", "sdxl"):
        raise ValueError(f"family must be 'sd' or 'sdxl', got {family!r}")
    torch.manual_seed(seed)
    unet_common = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=TINY_SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=16,
        attention_head_dim=8,
    )
    if family == "sd":
        tokenizer = clip_tokenizer()
        text_encoder = CLIPTextModel(clip_text_config(tokenizer))
        unet = UNet2DConditionModel(cross_attention_dim=32, **unet_common)
        pipe = StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=sd_scheduler(prediction_type),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
        text_encoder = CLIPTextModel(clip_text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizer_2, projection_dim=32))
        time_embed_dim = 8
        unet = UNet2DConditionModel(
            cross_attention_dim=64,  # both encoders' hidden states, concatenated
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim + 32,
            **unet_common,
        )
        pipe = StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=sd_scheduler(prediction_type),
        )
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe
