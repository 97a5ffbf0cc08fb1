"""The embedded model's BF16 UNet against its FP32 UNet, with each attention kernel.

    python bench/attention_unet_error.py [--model models/mixdiff-shapes] [--prompts 4] [--steps 10]

Captures the UNet's inputs along the FP32 model's own denoising runs (every step of
``--steps`` DDIM steps, ``--prompts`` prompts), then runs the BF16 UNet on each with
diffusers' SDPA processor, with ``mixdiff.attention`` and with
``mixdiff.int8_attention``, and prints each one's relative MSE against the FP32 UNet
over all inputs (the kernels themselves, also on a CPU with AMX where the ops would compute
SDPA by default): what the attention kernels change in the UNet's output, next to what
BF16 itself does. At the embedded model's own 16x16 latents its self-attention has 256
keys, fewer than ``int8_attention`` computes in INT8 (512), so the inputs are also run
with their latents upsampled 2x (1024 keys at the first level).
"""

from __future__ import annotations

import argparse
import copy

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from app.pipeline.loader import load_diffusers_pipeline
from kernels.attention import FusedAttnProcessor, attention_backend
from quantization import calibration

PROMPTS = [
    "a red circle on a blue square",
    "two green triangles",
    "a yellow star above a purple ring",
    "an orange square on a white background",
    "a small blue circle left of a big red square",
    "three pink hearts",
    "a black triangle on a yellow background",
    "a white star below a green circle",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/mixdiff-shapes")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    pipe, _, _ = load_diffusers_pipeline(args.model)
    inputs = calibration.capture(pipe, PROMPTS[: args.prompts], sampler="trajectory", steps=args.steps, seed=0)
    unet = pipe.unet.eval()
    bf16 = copy.deepcopy(unet).to(torch.bfloat16)
    processors = {
        "sdpa": AttnProcessor2_0(),
        "mixdiff.attention": FusedAttnProcessor(),
        "mixdiff.int8_attention": FusedAttnProcessor(int8_attention=True),
    }
    print(f"{len(inputs)} UNet inputs ({args.prompts} prompts x {args.steps} steps); BF16 UNet vs FP32, rel. MSE:")
    for upsample in (1, 2):
        error, norm = dict.fromkeys(processors, 0.0), 0.0
        with torch.no_grad(), attention_backend("fused"):
            for x in inputs:
                sample = torch.nn.functional.interpolate(x.sample, scale_factor=upsample, mode="nearest")
                reference = unet(sample, x.timestep, x.encoder_hidden_states).sample
                norm += float((reference**2).sum())
                for name, processor in processors.items():
                    bf16.set_attn_processor(processor)
                    out = bf16(sample.bfloat16(), x.timestep, x.encoder_hidden_states.bfloat16()).sample.float()
                    error[name] += float(((out - reference) ** 2).sum())
        size = sample.shape[-1]
        print(f"  latents {size}x{size}: " + ", ".join(f"{name} {e / norm:.4e}" for name, e in error.items()))


if __name__ == "__main__":
    main()
