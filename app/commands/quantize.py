"""``mixdiff quantize ptq``: an INT8 UNet artifact for a model, by post-training quantization.

The artifact lands in ``<model>/quantized/<out>/``, where the server finds it and
offers ``<out>`` as a precision name (``int8`` is the one schedules use by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from app.commands.arguments import at_least
from app.settings import DEFAULT_MODEL

_SAMPLERS = ("trajectory", "uniform", "normal")  # quantization.calibration.SAMPLERS, without importing torch


def register(subparsers) -> None:
    parser = subparsers.add_parser("quantize", help="make quantized UNet artifacts", description=__doc__)
    methods = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    ptq = methods.add_parser(
        "ptq",
        help="static INT8 post-training quantization (PT2E, X86InductorQuantizer) into an AOTInductor artifact",
        description=__doc__,
    )
    ptq.add_argument("--model", default=str(DEFAULT_MODEL), help="diffusers pipeline folder")
    ptq.add_argument("--out", default="int8", help="artifact name: the folder under <model>/quantized/")
    ptq.add_argument(
        "--sampler",
        choices=_SAMPLERS,
        default="trajectory",
        help="which denoising steps give calibration inputs: every step (trajectory), timesteps uniform over "
        "[0, T) (Q-Diffusion) or normal around 0.4 T (PTQ4DM)",
    )
    ptq.add_argument("--prompts", type=at_least(1), default=32, help="calibration prompts (each is one FP32 run)")
    ptq.add_argument(
        "--prompt-file",
        type=Path,
        default=None,
        help="calibration prompts, one per line (default: captions of the embedded model's data set)",
    )
    ptq.add_argument("--samples", type=at_least(1), default=8, help="inputs kept per prompt (uniform and normal samplers)")
    ptq.add_argument("--steps", type=at_least(1), default=50, help="denoising steps of each calibration run")
    ptq.add_argument("--guidance-scale", type=float, default=7.5)
    ptq.add_argument("--seed", type=int, default=0)
    ptq.add_argument(
        "--fallback",
        default="none",
        help="UNet blocks kept in BF16: 'none', 'auto' (a sensitivity scan picks the worst, up to "
        "--fallback-budget; it quantizes once per block, so it takes a while) or module names, comma-separated",
    )
    ptq.add_argument("--fallback-budget", type=at_least(0), default=3, help="most blocks 'auto' keeps in BF16")
    ptq.add_argument(
        "--timestep-groups",
        type=at_least(1),
        default=1,
        help="ranges of timesteps with their own activation scales; each is a compiled UNet of its own "
        "(K times the disk, memory and load time)",
    )
    ptq.add_argument("--scan-inputs", type=at_least(1), default=16, help="calibration inputs per block in the 'auto' scan")
    ptq.set_defaults(func=run)


def _prompts(args) -> list[str]:
    if args.prompt_file is None:
        from quantization.calibration import default_prompts

        return default_prompts(args.prompts)
    lines = [line.strip() for line in args.prompt_file.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{args.prompt_file} holds no prompts")
    return lines[: args.prompts]


def run(args: argparse.Namespace) -> int:
    model = Path(args.model)
    if not (model / "model_index.json").is_file():
        print(f"mixdiff quantize: {model} is not a diffusers pipeline folder (no model_index.json)", file=sys.stderr)
        return 2
    out = model / "quantized" / args.out
    if out.exists():
        print(f"mixdiff quantize: {out} already exists; remove it or choose another --out", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from app.pipeline.loader import ModelLoadError, load_diffusers_pipeline
    from quantization.build import BuildOptions, build_artifact

    try:
        prompts = _prompts(args)
        pipe, _, _ = load_diffusers_pipeline(str(model))
        options = BuildOptions(
            sampler=args.sampler,
            samples=args.samples,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            seed=args.seed,
            fallback=args.fallback,
            fallback_budget=args.fallback_budget,
            timestep_groups=args.timestep_groups,
            scan_inputs=args.scan_inputs,
        )
        manifest = build_artifact(pipe, prompts, out, options)
    except (ModelLoadError, ValueError, OSError) as exc:
        print(f"mixdiff quantize: {exc}", file=sys.stderr)
        return 2
    summary = {k: manifest[k] for k in ("fidelity", "load_seconds", "artifact_bytes", "build_seconds")}
    summary["fallback"] = manifest["fallback"]["layers"]
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0
