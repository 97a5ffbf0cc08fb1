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
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/mixdiff-shapes")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--prompt-seed", type=int, default=1000, help="as mixdiff eval's")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    args = parser.parse_args()

    from app.pipeline.loop import MixedPrecisionPipeline
    from app.pipeline.precision import set_text_encoder_precision
    from shapes import dataset
    from shapes.evaluate import generate_set
    from shapes.metrics import ssim

    model = MixedPrecisionPipeline.load(args.model, ["fp32", "bf16"], vae_precision="bf16")
    fp32_encoder = model.pipe.text_encoder
    bf16_encoder = set_text_encoder_precision(copy.deepcopy(fp32_encoder), "bf16")
    tokenizer = model.pipe.tokenizer
    prompts = dataset.prompts(args.prompts, args.prompt_seed)
    with torch.inference_mode():
        hidden_errors = []
        for prompt in prompts:
            ids = tokenizer(prompt.text, padding="max_length", max_length=tokenizer.model_max_length).input_ids
            ids = torch.tensor([ids])
            reference = fp32_encoder(ids)[0]
            error = (bf16_encoder(ids)[0].float() - reference).norm() / reference.norm()
            hidden_errors.append(float(error))

    start = time.perf_counter()

    def progress(label: str, i: int) -> None:
        print(f"\r{label}: {i + 1}/{len(prompts)} images, {time.perf_counter() - start:.0f} s", end="", flush=True)

    def images(label: str, encoder: torch.nn.Module, precision: str) -> np.ndarray:
        model.pipe.text_encoder = encoder
        schedule = [precision] * args.steps
        params = {"steps": args.steps, "guidance_scale": args.guidance_scale}
        return generate_set(model, schedule, prompts, seed=0, on_image=progress, label=label, **params)[0]

    reference = images("fp32", fp32_encoder, "fp32")
    losses = {
        "bf16 text encoder": images("bf16 text encoder", bf16_encoder, "fp32"),
        "bf16 UNet": images("bf16 UNet", fp32_encoder, "bf16"),
    }
    print()
    errors = f"rel. L2 mean {np.mean(hidden_errors):.2e}, max {max(hidden_errors):.2e}"
    print(f"hidden states, BF16 encoder vs FP32: {errors}")
    setting = f"{len(prompts)} prompts, {args.steps} steps, guidance {args.guidance_scale}"
    print(f"1 - SSIM against FP32 throughout, {setting}:")
    for name, batch in losses.items():
        values = [1 - ssim(image, ref) for image, ref in zip(batch, reference)]
        print(f"  {name}: mean {np.mean(values):.2e}, median {np.median(values):.2e}, max {max(values):.2e}")


if __name__ == "__main__":
    main()
