"""``mixdiff eval``: image quality of precision schedules on the embedded shapes model.

Each schedule generates the same prompts with the same seeds; the table gives prompt
accuracy (per attribute and overall), the Fréchet distance to real images on the
yardstick's features, and PSNR/SSIM against the FP32 image of the same seed and
prompt. Schedules: ``fp32``, ``bf16``, ``int8`` or ``HIGH/LOW:FIRST:LAST`` (e.g.
``bf16/int8:5:5``), comma-separated; FP32 always runs, and is the reference unless
``--reference-model`` names another model (a distilled student's teacher, whose FP32
images at its own default steps, guidance and scheduler every row is then compared
with; ``--steps`` may then list several step counts). Writes ``<out>/eval.md`` and
``<out>/eval.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.commands.arguments import HelpFormatter, at_least
from app.pipeline.types import DECODERS
from app.settings import DEFAULT_MODEL, REPO_ROOT


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="prompt accuracy, Fréchet distance, PSNR/SSIM of precision schedules",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="diffusers folder of the shapes model")
    parser.add_argument("--schedules", default="fp32,bf16", help="comma-separated, e.g. fp32,bf16,bf16/int8:5:5")
    parser.add_argument("--n", type=at_least(2), default=100, help="prompts (one image each, per schedule)")
    parser.add_argument(
        "--steps",
        type=_step_counts,
        default=None,
        help="default: the model's (its mixdiff.json, else 30); with --reference-model, a comma-separated list "
        "runs every schedule at each",
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="default: the model's (its mixdiff.json, else 7.5)"
    )
    parser.add_argument(
        "--scheduler", default=None, help="the sampler of every schedule; default: the model's (else ddim)"
    )
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        default=None,
        help="default: the model's (else the full VAE)",
    )
    parser.add_argument(
        "--reference-model",
        default=None,
        help="compare with this model's FP32 images (its own default steps, guidance and scheduler) instead "
        "of the evaluated model's FP32: a distilled student against its teacher",
    )
    parser.add_argument(
        "--reference-steps", type=at_least(1), default=None, help="the reference model's steps (default: its own)"
    )
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--prompt-seed", type=int, default=1000, help="data-set seed the prompts are drawn from")
    parser.add_argument(
        "--yardstick", default=str(REPO_ROOT / "models" / "shapes-yardstick"), help="classifier folder"
    )
    parser.add_argument("--out", default="runs/eval", help="folder for eval.md and eval.json")
    parser.add_argument("--grid", default=None, help="also write the first 16 FP32 images, captioned, to this PNG")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--vae-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="what every schedule's images are decoded in (default fp32: the reference is FP32 throughout)",
    )
    parser.add_argument(
        "--text-encoder-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="what every schedule's prompts are encoded in (default fp32: the reference is FP32 throughout)",
    )
    parser.set_defaults(func=run)


def _step_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"must be step counts of at least 1, got {text!r}")
    return counts


def run(args: argparse.Namespace) -> int:
    from app.errors import MixdiffError
    from shapes.evaluate import evaluate, parse_schedules, precisions_of, sample_grid

    try:
        specs = parse_schedules(args.schedules)
    except MixdiffError as exc:
        print(f"mixdiff eval: --schedules: {exc.message}", file=sys.stderr)
        return 2

    import torch

    from app.pipeline.loop import MixedPrecisionPipeline
    from shapes import dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        pipeline = MixedPrecisionPipeline.load(
            args.model,
            precisions_of(specs),
            vae_precision=args.vae_precision,
            text_encoder_precision=args.text_encoder_precision,
        )
    except RuntimeError as exc:
        print(f"mixdiff eval: {exc}", file=sys.stderr)
        return 2
    defaults = pipeline.info.defaults
    scheduler = args.scheduler or defaults["scheduler"]
    decoder = args.decoder or defaults["decoder"]
    if scheduler not in pipeline.schedulers:
        print(f"mixdiff eval: unknown scheduler {scheduler!r}; available: {', '.join(pipeline.schedulers)}",
              file=sys.stderr)
        return 2
    if decoder not in pipeline.info.decoders:
        print(f"mixdiff eval: this model has no {decoder} decoder; it has: {', '.join(pipeline.info.decoders)}",
              file=sys.stderr)
        return 2
    steps = [defaults["steps"]] if args.steps is None else args.steps

    def progress(label: str, i: int) -> None:
        if (i + 1) % 10 == 0 or i + 1 == args.n:
            print(f"{label}: {i + 1}/{args.n} images", file=sys.stderr, flush=True)

    try:
        reference = None
        if args.reference_model is not None:
            reference = _reference(args, progress)
        report, images = evaluate(
            pipeline,
            specs,
            n=args.n,
            steps=steps,
            guidance_scale=defaults["guidance_scale"] if args.guidance_scale is None else args.guidance_scale,
            scheduler=scheduler,
            decoder=decoder,
            seed=args.seed,
            prompt_seed=args.prompt_seed,
            yardstick_dir=args.yardstick,
            reference=reference,
            on_image=progress,
        )
    except MixdiffError as exc:
        reasons = "".join(f"\n  {name}: {reason}" for name, reason in pipeline.info.unavailable.items())
        print(f"mixdiff eval: {exc.message}{reasons}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # a missing model or mismatched yardstick
        print(f"mixdiff eval: {exc}", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.md").write_text(report.to_markdown())
    (out / "eval.json").write_text(report.to_json() + "\n")
    print(report.to_markdown())
    print(f"-> {out / 'eval.md'}, {out / 'eval.json'}")
    if args.grid:
        count = min(16, args.n)
        captions = [p.text for p in dataset.prompts(count, args.prompt_seed)]
        sample_grid(next(iter(images.values()))[:count], captions).save(args.grid)
        print(f"-> {args.grid}")
    return 0


def _reference(args, progress):
    """The reference model's FP32 images of the evaluated prompts and seeds, at its own defaults."""
    from app.engine.schedule import describe
    from app.pipeline.loop import MixedPrecisionPipeline
    from shapes import dataset
    from shapes.evaluate import Reference, generate_set

    teacher = MixedPrecisionPipeline.load(
        args.reference_model,
        ["fp32"],
        vae_precision=args.vae_precision,
        text_encoder_precision=args.text_encoder_precision,
    )
    own = teacher.info.defaults
    count = args.reference_steps or own["steps"]
    label = f"{teacher.info.name} fp32"
    images, seconds = generate_set(
        teacher, ["fp32"] * count, dataset.prompts(args.n, args.prompt_seed), seed=args.seed,
        on_image=progress, label=label, steps=count, guidance_scale=own["guidance_scale"],
        scheduler=own["scheduler"], decoder="full",
    )  # fmt: skip
    steps = f"{describe(['fp32'] * count)} of {own['scheduler']}, guidance {own['guidance_scale']}"
    return Reference(label, steps, images, seconds)
