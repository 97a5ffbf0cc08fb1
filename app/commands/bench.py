"""``mixdiff bench``: one UNet step in FP32, BF16 (eager and compiled) and INT8, side by side.

The UNet is SD 1.5's architecture with random weights on SD 1.5's shapes (CFG batch
2, 64x64 latents); compiling takes minutes. Results go to PREFIX.md and PREFIX.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_VARIANTS = ("fp32-eager", "bf16-eager", "bf16-compiled", "int8-compiled")  # quantization.bench.VARIANTS


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="time one UNet step at each precision", description=__doc__)
    parser.add_argument(
        "--unet",
        choices=("sd15", "tiny"),
        default="sd15",
        help="sd15: SD 1.5's UNet architecture (random weights); tiny: the tiny test UNet, a quick smoke run",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (the median is reported)")
    parser.add_argument(
        "--variants",
        default=",".join(_VARIANTS),
        help=f"comma-separated, from: {', '.join(_VARIANTS)}",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/unet-step"), help="output prefix (.md and .json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in _VARIANTS]
    if unknown or not variants:
        print(f"mixdiff bench: unknown variant(s) {', '.join(unknown) or '(none given)'}; "
              f"known: {', '.join(_VARIANTS)}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print(f"mixdiff bench: --rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return 2
    from quantization import bench

    if args.unet == "sd15":
        unet = bench.sd15_unet()
    else:
        from app.pipeline.tiny import build_tiny_pipeline

        unet = build_tiny_pipeline("sd").unet
    result = bench.run(unet, variants=variants, rounds=args.rounds)
    md, js = bench.write(result, args.out)
    print(bench.markdown(result))
    print(f"wrote {md} and {js}")
    return 0
