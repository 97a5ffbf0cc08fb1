"""Where a shapes model loses what its images show: the denoiser probed from partway.

Data-set images of one object are encoded, noised to a starting timestep, and denoised
from there with their own caption ("a red circle on a blue background") by the
model's DDIM sampler, as in SDEdit; the yardstick then reads shape and color back.
Starting from pure noise is plain generation. A denoiser that keeps the shape from a
late start but not from an early one lacks the prompt's conditioning; one that loses it
even from a late start lacks the fidelity to draw it at all.

    python -m shapes.probe --model models/mixdiff-shapes --n 48 --starts 1.0,0.7,0.5,0.3

``--starts``: fractions of the training timesteps to start from. Prints a markdown table
(the first row is the VAE's own reconstruction: the ceiling).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import DDIMScheduler

from app.pipeline.loader import load_diffusers_pipeline
from shapes import dataset, yardstick

#: Data-set seed of the probe's images (kept apart from training and evaluation seeds).
PROBE_SEED = 777


def _read(pipe, classifier, latents: torch.Tensor, scenes) -> tuple[float, float]:
    """Shares of images whose object's shape and color the yardstick reads right."""
    vae = pipe.vae
    pixels = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
    images = ((pixels + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    read = yardstick.read(classifier, images)
    shape = np.mean([r == s.objects[0].shape for r, s in zip(read["shape"], scenes)])
    color = np.mean([r == s.objects[0].color for r, s in zip(read["color"], scenes)])
    return float(shape), float(color)


@torch.inference_mode()
def probe(model: str, classifier, *, n: int, starts: list[float], steps: int, guidance: float) -> list[tuple]:
    """``(start timestep or None for the reconstruction, shape share, color share)`` rows."""
    pipe, _, _ = load_diffusers_pipeline(model)
    scenes = [dataset.scene(i, PROBE_SEED, two_object_share=0.0) for i in range(n)]
    captions = [f"a {s.objects[0].color} {s.objects[0].shape} on a {s.background} background" for s in scenes]
    pixels = torch.from_numpy(np.stack([dataset.render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    z0 = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor

    def encode(texts: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids)[0]

    hidden = torch.cat([encode([""] * n), encode(captions)])
    rows = [(None, *_read(pipe, classifier, z0, scenes))]
    for start in starts:
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        last = int(start * (scheduler.config.num_train_timesteps - 1))
        timesteps = [t for t in scheduler.timesteps if t <= last]
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
        z = noise if start >= 1.0 else scheduler.add_noise(z0, noise, torch.full((n,), int(timesteps[0])))
        for t in timesteps:
            uncond, cond = pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=hidden).sample.chunk(2)
            z = scheduler.step(uncond + guidance * (cond - uncond), t, z).prev_sample
        rows.append((int(timesteps[0]), *_read(pipe, classifier, z, scenes)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shapes.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/mixdiff-shapes")
    parser.add_argument("--yardstick", default="models/shapes-yardstick")
    parser.add_argument("--n", type=int, default=48, help="images probed")
    parser.add_argument("--starts", default="1.0,0.7,0.5,0.3", help="comma-separated fractions of the timesteps")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps over the whole schedule")
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    starts = [float(s) for s in args.starts.split(",") if s.strip()]
    rows = probe(args.model, yardstick.load(args.yardstick), n=args.n, starts=starts, steps=args.steps,
                 guidance=args.guidance_scale)
    print(f"{args.n} one-object data-set images (seed {PROBE_SEED}), DDIM {args.steps} steps, "
          f"guidance {args.guidance_scale}\n\n| start | shape read | color read |\n|---|---|---|")
    for start, shape, color in rows:
        label = "VAE reconstruction" if start is None else f"t = {start}"
        print(f"| {label} | {100 * shape:.1f}% | {100 * color:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
