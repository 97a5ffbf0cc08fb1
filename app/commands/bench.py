"""``mixdiff bench``: one UNet step in FP32, BF16 (eager, compiled, ahead-of-time compiled) and
INT8, side by side; with ``--service``, the server end to end; with ``--time-to-image``, a
few-step image's time.

The UNet is SD 1.5's, SD 2.1's or SDXL's architecture (``--unet``) with random weights at
its native size (CFG batch 2; 512x512, 768x768 and 1024x1024 px), with each variant's error
against FP32 and the memory it holds, and a VAE decode at that size; compiling takes minutes
(SDXL: about half an hour, and by default only INT8 and compiled BF16). ``--service`` saves
an SD 1.5-architecture pipeline with random weights and its INT8 and BF16 artifacts under
``--work`` (reused by later runs), starts ``mixdiff serve`` on it once per way of running
BF16 (eager, ``--compile``, its BF16 artifact; ``--bf16`` picks), each with the INT8
artifact, and records start-up, worker memory and 50-step 512x512 generations of BF16, the
k=5 mixed schedule and INT8. ``--time-to-image`` times, at batch 1 (no CFG), each part of
an image of SD 1.5- and SD 2.1-architecture models with random weights (text encoder in BF16
as served and in FP32, BF16 and INT8 UNet steps, full and tiny decoder, each interleaved with the others) and composes
the time to a 1- and 4-step 512x512 image per schedule and decoder; builds take minutes per
UNet. Results go to PREFIX.md and PREFIX.json.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from app.commands.arguments import HelpFormatter
from common import malloc

# bench.unet_step.VARIANTS
_VARIANTS = ("fp32-eager", "bf16-eager", "bf16-compiled", "bf16-compiled-sdpa", "bf16-aot", "int8-compiled")
# bench.unet_step.ARCHITECTURES
_UNETS = ("sd15", "sd21", "sdxl")
#: SDXL's default: FP32 eager would hold its 10 GB of FP32 weights beside the others
_SDXL_VARIANTS = ("bf16-compiled", "int8-compiled")
# bench.service.BF16_MODES
_BF16_MODES = ("eager", "compiled", "aot")
# bench.time_to_image.ARCHITECTURES
_ARCHITECTURES = ("sd15", "sd21", "tiny")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _unknown(what: str, names: list[str], known: tuple[str, ...]) -> str | None:
    """The error for ``names`` that are not all ``known`` (or are none); else ``None``."""
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        return f"mixdiff bench: unknown {what} {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}"
    return None


def _step_counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated step counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"step counts must be at least 1, got {text!r}")
    return counts


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="time one UNet step at each precision", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--unet",
        choices=(*_UNETS, "tiny"),
        default="sd15",
        help="the UNet architecture, random weights at its native size: sd15 (512x512), sd21 (SD 2.1, 768x768), "
        "sdxl (1024x1024; its FP32 UNet is 10 GB); tiny: the tiny test UNet, a quick smoke run",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved timing rounds, the median is reported (default 5; with --service 1: a round is minutes)",
    )
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated, from: {', '.join(_VARIANTS)} (default: all; --unet sdxl: "
        f"{','.join(_SDXL_VARIANTS)})",
    )
    parser.add_argument(
        "--peer",
        choices=("openvino",),
        default=None,
        help="also time OpenVINO's BF16 and NNCF's INT8 on the same UNet, inputs and threads, interleaved with "
        "mixdiff's variants, with each one's error against FP32 (with --time-to-image, its text encoder and "
        "decoders too; the optional extra: pip install -e '.[peer]')",
    )
    parser.add_argument(
        "--onednn-profile",
        action="store_true",
        help="after the timing, one more step of each mixdiff variant with oneDNN's verbose log: its time per "
        "primitive kind and data type (convolutions, matmuls, attention's brgemm) beside the whole step's",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--service", action="store_true", help="benchmark the server end to end instead of one step")
    mode.add_argument(
        "--time-to-image",
        action="store_true",
        help="time each part of a few-step image at batch 1 and compose the time to image per step count, "
        "schedule (bf16, bf16/int8:1:1, int8) and decoder (full, tiny); with --peer, OpenVINO's beside it",
    )
    parser.add_argument(
        "--work", type=Path, default=Path("runs/bench"), help="--service: where the model folder is kept"
    )
    parser.add_argument(
        "--bf16",
        default=",".join(_BF16_MODES),
        help="--service: comma-separated ways the server runs BF16, one start each: eager, compiled "
        "(--compile) and aot (the artifact mixdiff quantize bf16 makes)",
    )
    parser.add_argument(
        "--steps",
        type=_step_counts,
        default=None,
        help="--service: denoising steps per generation (default 50); --time-to-image: comma-separated step "
        "counts to compose (default 1,4)",
    )
    parser.add_argument(
        "--archs",
        default="sd15,sd21",
        help=f"--time-to-image: comma-separated, from: {', '.join(_ARCHITECTURES)} (tiny: a quick smoke run)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output prefix (.md and .json); bench/unet-step, bench/service or bench/time-to-image",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.variants is None:
        args.variants = ",".join(_SDXL_VARIANTS if args.unet == "sdxl" else _VARIANTS)
    variants = _names(args.variants)
    if problem := _unknown("variant(s)", variants, _VARIANTS):
        print(problem, file=sys.stderr)
        return 2
    if args.peer and args.service:
        print("mixdiff bench: --peer times UNet steps; it does not go with --service", file=sys.stderr)
        return 2
    if args.onednn_profile and (args.service or args.time_to_image):
        print("mixdiff bench: --onednn-profile logs UNet steps; it goes with neither --service nor --time-to-image",
              file=sys.stderr)
        return 2
    archs = _names(args.archs)
    if args.time_to_image and (problem := _unknown("architecture(s)", archs, _ARCHITECTURES)):
        print(problem, file=sys.stderr)
        return 2
    modes = _names(args.bf16)
    if args.service and (problem := _unknown("--bf16 mode(s)", modes, _BF16_MODES)):
        print(problem, file=sys.stderr)
        return 2
    if args.service and args.steps is not None and len(args.steps) != 1:
        print("mixdiff bench: --service takes one step count", file=sys.stderr)
        return 2
    from bench import wheelhouse

    missing, _ = wheelhouse.problems(peer=False)
    if missing:
        print(f"mixdiff bench: missing here: {'; '.join(missing)} (python -m bench.wheelhouse --help)", file=sys.stderr)
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

    if args.time_to_image:
        from bench import time_to_image as report

        command = shlex.join(["mixdiff", *args.argv])
        steps = args.steps or [1, 4]
        result = report.run(archs, step_counts=steps, rounds=args.rounds, peer=bool(args.peer), command=command)
        default_out = Path("bench/time-to-image")
    elif args.service:
        from bench import service as report

        steps = (args.steps or [50])[0]
        result = report.run(args.work, unet=args.unet, modes=modes, rounds=args.rounds, steps=steps)
        default_out = Path("bench/service")
    else:
        report = unet_step
        if args.unet == "tiny":
            from app.pipeline.tiny import build_tiny_pipeline

            unet = build_tiny_pipeline("sd").unet
        else:
            unet = unet_step.ARCHITECTURES[args.unet]()
        size = unet.config.sample_size
        # SDXL: its FP32 weights and an INT8 compilation do not fit in 23 GB together; the build drops them
        rebuild = unet_step.ARCHITECTURES[args.unet] if args.unet == "sdxl" else None
        measured = unet_step.run(
            unet, variants=variants, rounds=args.rounds, rebuild=rebuild, onednn=args.onednn_profile
        )
        result = {"architecture": args.unet, **measured}
        if args.unet != "tiny":
            del unet
            result["vae_decode"] = unet_step.vae_decode(unet_step.sd15_vae(), latent_size=size, rounds=args.rounds)
        default_out = Path("bench/unet-step")
    md, js = unet_step.write(result, args.out or default_out, report.markdown)
    print(report.markdown(result))
    print(f"wrote {md} and {js}")
    return 0
