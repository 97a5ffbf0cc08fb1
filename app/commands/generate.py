"""``mixdiff generate``: one image to a file, with no server, and the precision and
time of every step printed as it runs."""

from __future__ import annotations

import argparse
import json
import sys

from app.commands.arguments import HelpFormatter, at_least
from app.pipeline.types import DECODERS
from app.settings import DEFAULT_MODEL, model_folder


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate one image to a file, no server", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="diffusers folder, or 'tiny-random'")
    parser.add_argument(
        "--precision",
        default="bf16",
        help='a precision name, or a JSON schedule: \'{"high": "bf16", "low": "int8", "first": 5, "last": 5}\' '
        "or a list with one precision per step",
    )
    parser.add_argument("--steps", type=at_least(1), default=None, help="default: the model's (30 unless its "
                        "folder's mixdiff.json says otherwise)")
    parser.add_argument("--width", type=int, default=None, help="pixels; default: the model's size")
    parser.add_argument("--height", type=int, default=None, help="pixels; default: the model's size")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the model's (7.5 unless its "
                        "folder's mixdiff.json says otherwise)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same image")
    parser.add_argument(
        "--scheduler", default=None, help="the sampler, one the model lists; default: the model's (else ddim)"
    )
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        default=None,
        help="the VAE, or the model's tiny decoder (its vae_tiny/), or that decoder in INT8 (its vae_tiny/int8/, "
        "from mixdiff quantize tiny-decoder); default: the model's (else full)",
    )
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the UNets"
    )
    parser.add_argument("--vae-precision", choices=("fp32", "bf16"), default="bf16", help="what the VAE decodes in")
    parser.add_argument(
        "--text-encoder-precision", choices=("fp32", "bf16"), default="bf16", help="what the text encoders encode in"
    )
    parser.set_defaults(func=run)


def _spec(text: str):
    """The --precision argument as a schedule spec: JSON when it looks like JSON, else a name."""
    from pydantic import TypeAdapter

    from app.engine.schedule import PrecisionSpec

    return TypeAdapter(PrecisionSpec).validate_python(json.loads(text) if text[:1] in "[{" else text)


def run(args: argparse.Namespace) -> int:
    from app.engine.schedule import describe, precisions_named, resolve
    from app.errors import MixdiffError
    from app.pipeline.loop import MixedPrecisionPipeline
    from app.pipeline.types import GenerationParams
    from app.pipeline.variants import offered

    try:
        spec = _spec(args.precision)
    except ValueError as exc:
        print(f"mixdiff generate: --precision: {exc}", file=sys.stderr)
        return 2
    try:
        folder = model_folder(args.model)
    except ValueError as exc:
        print(f"mixdiff generate: {exc}", file=sys.stderr)
        return 2
    available = offered(folder)
    missing = sorted(precisions_named(spec) - set(available))
    if missing:
        print(
            f"mixdiff generate: precision {', '.join(map(repr, missing))} is not available for this model; "
            f"available: {', '.join(available)}",
            file=sys.stderr,
        )
        return 2
    for name in ("width", "height"):
        if getattr(args, name) is not None and getattr(args, name) % 8:
            print(f"mixdiff generate: --{name} must be a multiple of 8, got {getattr(args, name)}", file=sys.stderr)
            return 2
    try:
        pipeline = MixedPrecisionPipeline.load(
            args.model,
            sorted(precisions_named(spec)),
            compile=args.compile,
            vae_precision=args.vae_precision,
            text_encoder_precision=args.text_encoder_precision,
        )
    except RuntimeError as exc:  # a missing or unsupported model folder
        print(f"mixdiff generate: {exc}", file=sys.stderr)
        return 2
    scheduler = args.scheduler or pipeline.info.defaults["scheduler"]
    decoder = args.decoder or pipeline.info.defaults["decoder"]
    if scheduler not in pipeline.schedulers:
        available = ", ".join(pipeline.schedulers)
        print(f"mixdiff generate: unknown scheduler {scheduler!r}; available: {available}", file=sys.stderr)
        return 2
    if decoder not in pipeline.info.decoders:
        print(f"mixdiff generate: this model has no {decoder} decoder; it has: {', '.join(pipeline.info.decoders)}",
              file=sys.stderr)
        return 2
    steps = pipeline.info.defaults["steps"] if args.steps is None else args.steps
    guidance = pipeline.info.defaults["guidance_scale"] if args.guidance_scale is None else args.guidance_scale
    try:
        schedule = resolve(spec, steps, pipeline.precisions)
    except MixdiffError as exc:
        reasons = "".join(f"\n  {name}: {reason}" for name, reason in pipeline.info.unavailable.items())
        print(f"mixdiff generate: {exc.message}{reasons}", file=sys.stderr)
        return 2
    params = GenerationParams(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        steps=steps,
        guidance_scale=guidance,
        seed=args.seed,
        scheduler=scheduler,
        decoder=decoder,
    )
    print(
        f"{pipeline.info.name}: {steps} steps of {scheduler}, guidance {guidance}, schedule {describe(schedule)}, "
        f"{decoder} decoder"
    )
    def on_step(step) -> None:
        print(f"step {step.index:3d}  {step.precision:>6}  {step.seconds:.3f} s", flush=True)

    try:
        result = pipeline.generate(params, schedule, on_step)
    except MixdiffError as exc:  # a size the chosen precision or decoder was not built for
        print(f"mixdiff generate: {exc.message}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    with open(args.out, "wb") as file:
        file.write(result.images[0])
    print(
        f"text encode {result.text_encode_seconds:.3f} s, steps {sum(s.seconds for s in result.steps):.3f} s, "
        f"VAE decode {result.vae_decode_seconds:.3f} s, total {result.total_seconds:.3f} s -> {args.out}"
    )
    return 0
