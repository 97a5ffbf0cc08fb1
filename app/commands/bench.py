"""``mixdiff bench``: one UNet step in FP32, BF16 (eager and compiled) and INT8, side by side;
with ``--service``, the server end to end.

The UNet is SD 1.5's architecture with random weights on SD 1.5's shapes (CFG batch
2, 64x64 latents); compiling takes minutes. ``--service`` saves an SD 1.5-architecture
pipeline with random weights and its INT8 artifact under ``--work`` (reused by later
runs), starts ``mixdiff serve`` on it (BF16 eager, then BF16 compiled, each with the
INT8 artifact) and records start-up, worker memory and 50-step 512x512 generations of
BF16, the k=5 mixed schedule and INT8. Results go to PREFIX.md and PREFIX.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from app.commands.arguments import HelpFormatter
from common import malloc

# bench.unet_step.VARIANTS
_VARIANTS = ("fp32-eager", "bf16-eager", "bf16-compiled", "bf16-compiled-sdpa", "int8-compiled")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="time one UNet step at each precision", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--unet",
        choices=("sd15", "tiny"),
        default="sd15",
        help="sd15: SD 1.5's UNet architecture (random weights); tiny: the tiny test UNet, a quick smoke run",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved timing rounds, the median is reported (default 5; with --service 1: a round is minutes)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(_VARIANTS),
        help=f"comma-separated, from: {', '.join(_VARIANTS)}",
    )
    parser.add_argument(
        "--peer",
        choices=("openvino",),
        default=None,
        help="also time OpenVINO's BF16 and NNCF's INT8 on the same UNet, inputs and threads, interleaved with "
        "mixdiff's variants, with each one's error against FP32 (the optional extra: pip install -e '.[peer]')",
    )
    parser.add_argument("--service", action="store_true", help="benchmark the server end to end instead of one step")
    parser.add_argument("--work", type=Path, default=Path("runs/bench"), help="--service: where the model folder is kept")
    parser.add_argument("--steps", type=int, default=50, help="--service: denoising steps per generation")
    parser.add_argument(
        "--out", type=Path, default=None, help="output prefix (.md and .json); bench/unet-step or bench/service"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in _VARIANTS]
    if unknown or not variants:
        print(f"mixdiff bench: unknown variant(s) {', '.join(unknown) or '(none given)'}; "
              f"known: {', '.join(_VARIANTS)}", file=sys.stderr)
        return 2
    if args.peer and args.service:
        print("mixdiff bench: --peer times UNet steps; it does not go with --service", file=sys.stderr)
        return 2
    if args.peer:
        from bench import openvino_peer

        missing = openvino_peer.available()
        if missing:
            print(f"mixdiff bench: --peer openvino: {missing}", file=sys.stderr)
            return 2
        variants += [v for v in openvino_peer.VARIANTS if v not in variants]
    if args.rounds is None:
        args.rounds = 1 if args.service else 5
    if args.rounds < 1:
        print(f"mixdiff bench: --rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return 2
    environ = malloc.with_tunables(dict(os.environ))
    if environ is not None:  # glibc reads it at start-up: measure the way the server's workers run
        return subprocess.call([sys.executable, "-m", "app.cli", *args.argv], env=environ)
    from bench import unet_step

    if args.service:
        from bench import service as report

        result = report.run(args.work, unet=args.unet, rounds=args.rounds, steps=args.steps)
        default_out = Path("bench/service")
    else:
        report = unet_step
        if args.unet == "sd15":
            unet = unet_step.sd15_unet()
        else:
            from app.pipeline.tiny import build_tiny_pipeline

            unet = build_tiny_pipeline("sd").unet
        result = unet_step.run(unet, variants=variants, rounds=args.rounds)
        if args.unet == "sd15":
            result["vae_decode"] = unet_step.vae_decode(unet_step.sd15_vae(), latent_size=64, rounds=args.rounds)
        default_out = Path("bench/unet-step")
    md, js = unet_step.write(result, args.out or default_out, report.markdown)
    print(report.markdown(result))
    print(f"wrote {md} and {js}")
    return 0
