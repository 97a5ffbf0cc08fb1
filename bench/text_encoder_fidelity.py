"""What encoding prompts in BF16 changes in a model's images, next to what the BF16 UNet changes.

Each prompt is generated three times with the same seed: the FP32 UNet conditioned by the FP32
text encoder (the reference), the FP32 UNet conditioned by the BF16 text encoder (what the
server's ``text_encoder_precision`` changes), and the BF16 UNet conditioned by the FP32 text
encoder (for scale); each image's 1 - SSIM against the reference, and the relative L2 error of
the BF16 encoder's hidden states. The decoder is the VAE in BF16 for all three, as the server
decodes.

    python -m bench.text_encoder_fidelity --model models/mixdiff-shapes --prompts 48
"""

from __future__ import annotations

import argparse
import copy
import io
import time

import numpy as np
import torch
from PIL import Image


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/mixdiff-shapes")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--prompt-seed", type=int, default=1000, help="as mixdiff eval's")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    args = parser.parse_args()

    from app.pipeline.loop import MixedPrecisionPipeline, set_text_encoder_precision
    from app.pipeline.types import GenerationParams
    from shapes import dataset
    from shapes.metrics import ssim

    model = MixedPrecisionPipeline.load(args.model, ["fp32", "bf16"], vae_precision="bf16")
    fp32_encoder = model.pipe.text_encoder
    bf16_encoder = set_text_encoder_precision(copy.deepcopy(fp32_encoder), "bf16")
    tokenizer = model.pipe.tokenizer
    losses: dict[str, list[float]] = {"bf16 text encoder": [], "bf16 UNet": []}
    hidden_errors = []
    start = time.perf_counter()
    prompts = [p.text for p in dataset.prompts(args.prompts, args.prompt_seed)]
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
            reference_hidden = fp32_encoder(ids.input_ids)[0]
            error = (bf16_encoder(ids.input_ids)[0].float() - reference_hidden).norm() / reference_hidden.norm()
            hidden_errors.append(float(error))
            params = GenerationParams(prompt=prompt, seed=i, steps=args.steps, guidance_scale=args.guidance_scale)
            model.pipe.text_encoder = fp32_encoder
            reference = _pixels(model.generate(params, ["fp32"] * args.steps).images[0])
            bf16_unet = _pixels(model.generate(params, ["bf16"] * args.steps).images[0])
            model.pipe.text_encoder = bf16_encoder
            bf16_text = _pixels(model.generate(params, ["fp32"] * args.steps).images[0])
            losses["bf16 text encoder"].append(1 - ssim(bf16_text, reference))
            losses["bf16 UNet"].append(1 - ssim(bf16_unet, reference))
            elapsed = time.perf_counter() - start
            eta = elapsed / (i + 1) * (len(prompts) - i - 1)
            print(f"\r{i + 1}/{len(prompts)} prompts, {elapsed:.0f} s, ETA {eta:.0f} s", end="", flush=True)
    print()
    errors = f"rel. L2 mean {np.mean(hidden_errors):.2e}, max {max(hidden_errors):.2e}"
    print(f"hidden states, BF16 encoder vs FP32: {errors}")
    setting = f"{len(prompts)} prompts, {args.steps} steps, guidance {args.guidance_scale}"
    print(f"1 - SSIM against FP32 throughout, {setting}:")
    for name, values in losses.items():
        print(f"  {name}: mean {np.mean(values):.2e}, median {np.median(values):.2e}, max {max(values):.2e}")


if __name__ == "__main__":
    main()
