"""``mixdiff distill lcm``: a few-step student of a model, in a model folder of its own.

Latent consistency distillation (LCM): the model's FP32 UNet is the teacher, and the
student learns to jump from any point of the teacher's guided denoising trajectory to
its end, so it draws in 1–8 steps with ``LCMScheduler`` and no classifier-free guidance
(the guidance is distilled in). The student's folder is the teacher's with the new UNet
and scheduler, and a ``mixdiff.json`` whose defaults run it as distilled; serve it with
``mixdiff serve --model OUT``, quantize it like any model (``mixdiff quantize ptq --model
OUT`` calibrates on its own few-step runs). docs/FEW_STEPS.md has the measured recipe.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from app.commands.arguments import HelpFormatter, at_least
from app.commands.training import add_data_arguments, training_data
from app.settings import DEFAULT_MODEL


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill", help="distil a model into a few-step student", description=__doc__, formatter_class=HelpFormatter
    )
    methods = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    lcm = methods.add_parser(
        "lcm",
        help="latent consistency distillation: a 1-8 step student with LCMScheduler",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    lcm.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="the teacher: a diffusers pipeline folder, SD 1.x or 2.x (default: the embedded model)",
    )
    lcm.add_argument("--out", type=Path, required=True, help="the student's model folder (must not exist)")
    lcm.add_argument(
        "--steps", type=at_least(1), default=4, help="the student's default step count, written to its mixdiff.json"
    )
    add_data_arguments(lcm, size=8192)
    training = lcm.add_argument_group("training")
    training.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance of the teacher, distilled into the student (default: the teacher's "
        "default guidance, from its mixdiff.json)",
    )
    training.add_argument(
        "--teacher-steps",
        type=at_least(1),
        default=50,
        help="the teacher's DDIM grid: each training step is one teacher step of T/teacher-steps timesteps",
    )
    training.add_argument("--train-steps", type=at_least(1), default=1500, help="optimizer steps")
    training.add_argument("--batch", type=at_least(1), default=16, help="examples per optimizer step")
    training.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of AdamW")
    training.add_argument("--warmup", type=at_least(0), default=100, help="linear warm-up steps, then cosine decay")
    training.add_argument(
        "--target-ema", type=float, default=0.95, help="EMA decay of the target network the student is pulled to"
    )
    training.add_argument(
        "--no-autocast",
        dest="autocast",
        action="store_false",
        help="train in FP32 instead of BF16 autocast (FP32 master weights either way)",
    )
    training.add_argument(
        "--work", type=Path, default=None, help="checkpoints and the loss log (default: runs/distill/<out's name>)"
    )
    training.add_argument("--checkpoint-every", type=at_least(1), default=250, help="steps between checkpoints")
    training.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --work")
    training.add_argument("--train-seed", type=int, default=0, help="seed of every training draw")
    lcm.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, out = Path(args.model), args.out
    if not (model / "model_index.json").is_file():
        print(f"mixdiff distill: {model} is not a diffusers pipeline folder (no model_index.json)", file=sys.stderr)
        return 2
    if out.exists():
        print(f"mixdiff distill: {out} already exists; remove it or choose another --out", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from app.pipeline.loader import ModelLoadError, generation_defaults, load_diffusers_pipeline
    from distillation.lcm import LCMConfig, write_student
    from shapes.dataset import DISTILL_SEED, calibration_prompts

    try:
        guidance = args.guidance if args.guidance is not None else generation_defaults(model)["guidance_scale"]
        config = LCMConfig(
            data=training_data(args, calibration_prompts(64), shapes_seed=DISTILL_SEED),
            data_size=args.data_size,
            guidance=guidance,
            teacher_steps=args.teacher_steps,
            train_steps=args.train_steps,
            batch=args.batch,
            lr=args.lr,
            warmup=args.warmup,
            target_ema=args.target_ema,
            autocast=args.autocast,
            work=args.work or Path("runs") / "distill" / out.name,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            seed=args.train_seed,
        )
        if config.work.resolve() == out.resolve():
            raise ValueError(f"--work {config.work} is --out: the checkpoints need a folder of their own")
        pipe, family, _ = load_diffusers_pipeline(str(model))
        if family != "sd":
            raise ValueError("mixdiff distill lcm distils SD 1.x and 2.x pipelines")
        student = config.train(pipe)
        write_student(model, student, out, config, steps=args.steps)
    except (ModelLoadError, ValueError, OSError) as exc:
        print(f"mixdiff distill: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: config.summary[k] for k in ("train_seconds", "peak_rss_bytes", "last_step")}, indent=2))
    print(f"wrote {out}: serve it with mixdiff serve --model {out}")
    return 0
