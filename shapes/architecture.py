"""The architecture of the embedded default model: Stable Diffusion's, at a small width.

The VAE downsamples x4 (64x64 px -> 16x16x4 latents), the text encoder is a CLIP text
transformer over the shapes vocabulary, the UNet has SD 1.x's block structure
(cross-attention down/up blocks around a plain lowest level, GroupNorm, a
cross-attention mid block) and the scheduler is SD's scaled-linear schedule (rescaled to zero terminal SNR), so
everything done to this model (schedulers, precisions, quantization) is done to the
same kinds of layers as in SD 1.5.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from common.tokenizer import write_clip_tokenizer
from shapes.dataset import SIZE, VOCABULARY

#: Tokens per prompt; captions of the data set take at most about 22.
MAX_TOKENS = 32
LATENT_CHANNELS = 4
TEXT_WIDTH = 128
#: SD's scaled-linear betas, rescaled to zero terminal SNR (Lin et al., "Common Diffusion Noise Schedules
#: and Sample Steps are Flawed"): at SD's own last timestep sqrt(alpha_bar) is 0.068, and at 16x16 latents
#: that much of the image shows through the noise, so a model learns to take the layout from the random
#: start instead of from the prompt. Zero terminal SNR needs v-prediction (SD 2.x's), and sampling that
#: starts at the last timestep ("trailing" spacing).
SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    rescale_betas_zero_snr=True,
    prediction_type="v_prediction",
)


def tokenizer(directory: str | Path) -> CLIPTokenizer:
    return write_clip_tokenizer(VOCABULARY, directory, max_length=MAX_TOKENS)


def text_encoder(tok: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            hidden_size=TEXT_WIDTH,
            intermediate_size=4 * TEXT_WIDTH,
            num_attention_heads=4,
            num_hidden_layers=3,
            max_position_embeddings=MAX_TOKENS,
        )
    )


def vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),  # narrow at full resolution, where a VAE spends its time
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=SIZE,
    )


def unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=SIZE // 4,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 96, 96),
        layers_per_block=(2, 1, 1),  # two at 16x16, where a shape's edges are drawn
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,  # diffusers' legacy name: SD 1.x passes the number of heads here
        norm_num_groups=32,
    )


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, clip_sample=False)


def sampling_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        **SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing"
    )
