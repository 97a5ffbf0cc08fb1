"""``mixdiff quantize METHOD``: an INT8 (or ahead-of-time compiled BF16) UNet artifact for a model.

The artifact lands in ``<model>/quantized/<out>/``, and the server offers it as the
precision named ``<out>``: every artifact of the folder is offered (``--precisions``'
default ``*``), unless the server's ``--precisions`` name others only, in which case
``GET /v1/models`` lists it as unavailable and says why. Every INT8 method calibrates on
the FP32 model's own denoising runs, keeps the blocks ``--fallback`` names in BF16,
compiles one AOTInductor package per timestep group, checks it, and measures its fidelity
on held-out inputs (docs/QUANTIZATION.md). ``bf16`` quantizes nothing: it compiles the
BF16 UNet once, so a server need not compile it at every start; its calibration runs only
give the inputs it is checked and measured on. ``mixdiff quantize tiny-decoder`` makes the
model's tiny decoder INT8 the same way (``quantization.decoder``), into ``vae_tiny/int8/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path

from app.commands.arguments import HelpFormatter, at_least
from app.commands.training import add_data_arguments, read_lines, training_data
from app.settings import DEFAULT_MODEL
from quantization.methods import METHODS

_SAMPLERS = ("trajectory", "uniform", "normal")  # quantization.calibration.SAMPLERS, without importing torch
_TIMESTEP_LAWS = ("uniform", "normal")  # quantization.methods.qat.TIMESTEP_LAWS
# quantization.methods.qat's defaults: --data-size, one call or --rollout at a time; --caption-dropout
EXAMPLES, ROLLOUT_TRAJECTORIES, CAPTION_DROPOUT = 2048, 256, 0.1


def _prompt_file_argument(parser) -> None:
    parser.add_argument(
        "--prompt-file",
        type=Path,
        default=None,
        help="calibration prompts, one per line (default: captions of the embedded model's data set)",
    )


def _shared_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="diffusers pipeline folder (default: the embedded model, models/mixdiff-shapes)",
    )
    parser.add_argument(
        "--out",
        default="int8",
        help="artifact name: the folder under <model>/quantized/, and the precision name the server offers it "
        "under (every artifact is offered unless the server's --precisions leave it out; schedules name it "
        "like fp32 or bf16)",
    )
    calibration = parser.add_argument_group("calibration (the FP32 model's own denoising runs)")
    calibration.add_argument(
        "--sampler",
        choices=_SAMPLERS,
        default="trajectory",
        help="which denoising steps give calibration inputs: every step (trajectory), timesteps uniform over "
        "[0, T) (Q-Diffusion) or normal around 0.4 T (PTQ4DM)",
    )
    calibration.add_argument(
        "--prompts", type=at_least(1), default=32, help="calibration prompts, each one FP32 run"
    )
    _prompt_file_argument(calibration)
    calibration.add_argument(
        "--samples", type=at_least(1), default=8, help="inputs kept per prompt, uniform and normal samplers"
    )
    calibration.add_argument(
        "--steps",
        type=at_least(1),
        default=None,
        help="denoising steps of each calibration run, with the model's own scheduler (default: the model's "
        "steps, from its mixdiff.json, else 30): a few-step model calibrates on its few-step trajectory",
    )
    calibration.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance of the calibration runs (default: the model's, else 7.5)",
    )
    calibration.add_argument("--seed", type=int, default=0, help="seed of the calibration runs")


def _layer_arguments(parser: argparse.ArgumentParser) -> None:
    layers = parser.add_argument_group("what stays BF16, and packages")
    layers.add_argument(
        "--fallback",
        default="none",
        help="UNet blocks kept in BF16: 'none', 'auto' (a sensitivity scan picks the worst, up to "
        "--fallback-budget; it quantizes once per block, so it takes a while) or module names, comma-separated",
    )
    layers.add_argument(
        "--fallback-budget", type=at_least(0), default=3, help="most blocks 'auto' keeps in BF16"
    )
    layers.add_argument(
        "--scan-inputs", type=at_least(1), default=16, help="calibration inputs per block in the 'auto' scan"
    )
    layers.add_argument(
        "--timestep-groups",
        type=at_least(1),
        default=1,
        help="ranges of timesteps with their own activation scales; each is a compiled UNet of its own "
        "(K times the disk, memory and load time)",
    )


def _ptq_arguments(parser: argparse.ArgumentParser) -> None:
    _layer_arguments(parser)


def _bf16_arguments(parser: argparse.ArgumentParser) -> None:
    """Nothing is quantized: no layers to keep apart, one package; its calibration runs give the inputs
    it is checked and measured on."""
    parser.set_defaults(out="bf16-aot", prompts=4, fallback="none", fallback_budget=0, scan_inputs=1, timestep_groups=1)


def _qat_arguments(parser: argparse.ArgumentParser) -> None:
    _layer_arguments(parser)
    size_help = f"default {EXAMPLES}, or {ROLLOUT_TRAJECTORIES} teacher trajectories with --rollout"
    data = add_data_arguments(parser, size=None, size_help=size_help)
    data.add_argument(
        "--timesteps",
        choices=_TIMESTEP_LAWS,
        default="uniform",
        help="law of the training timesteps: uniform over [0, T) as the model was trained, or normal around "
        "0.4 T (PTQ4DM)",
    )
    data.add_argument(
        "--caption-dropout",
        type=float,
        default=None,
        help=f"share of examples trained with the empty caption, the unconditional half of guidance (default "
        f"{CAPTION_DROPOUT}; not with --kd-guidance or --rollout, whose examples are CFG pairs)",
    )
    training = parser.add_argument_group("training")
    training.add_argument("--train-steps", type=at_least(1), default=400, help="optimizer steps")
    training.add_argument(
        "--batch",
        type=at_least(2),
        default=8,
        help="UNet inputs per optimizer step, a multiple of 2; with --kd-guidance or --rollout each example is a CFG "
        "pair, so --batch 8 trains 4 examples (rollouts) a step",
    )
    training.add_argument("--lr", type=float, default=1e-5, help="peak learning rate of AdamW")
    training.add_argument(
        "--warmup", type=at_least(0), default=50, help="linear warm-up steps, then cosine decay"
    )
    training.add_argument(
        "--kd-weight",
        type=float,
        default=1.0,
        help="weight λ of the distillation loss, the student's output against the FP32 teacher's; 0 trains on the "
        "denoising loss alone",
    )
    training.add_argument(
        "--denoise-weight",
        type=float,
        default=0.0,
        help="weight of the ordinary denoising loss (ε or v, as the model predicts); it pulls the student towards "
        "the data rather than the teacher, so the default leaves it out (docs/QUANTIZATION.md)",
    )
    training.add_argument(
        "--kd-guidance",
        type=float,
        default=0.0,
        help="distill the classifier-free-guided output at this scale: each example runs as the sampler runs "
        "it, with its empty caption, and the loss compares uncond + scale * (cond - uncond); 0 compares every "
        "output alone",
    )
    training.add_argument(
        "--rollout",
        type=at_least(0),
        default=0,
        metavar="M",
        help="distill M sampler steps at a time instead of one UNet call: the FP32 teacher runs the model's DDIM "
        "sampler (guided at --kd-guidance) for each training caption, and each example runs the student M steps "
        "from a point of one of those trajectories (drawn uniformly), the loss on where it lands against where the "
        "teacher went; only the captions of --data are used; 0 distills one call at a time",
    )
    training.add_argument(
        "--rollout-sampler-steps",
        type=at_least(1),
        default=50,
        help="with --rollout: the steps of the teacher's sampler runs",
    )
    training.add_argument(
        "--feature-kd-weight",
        type=float,
        default=0.0,
        help="weight of intermediate-feature distillation: each down, mid and up block's output against the "
        "teacher's, relative to its size; 0 is off",
    )
    training.add_argument(
        "--ema", type=float, default=0.0, help="EMA decay of the student's weights, 0 for none"
    )
    training.add_argument(
        "--no-init-from-calibration",
        dest="init_from_calibration",
        action="store_false",
        help="start the activation ranges from the first training batches (moving-average min/max, kept moving) "
        "instead of PTQ's ranges on the calibration inputs (needs --fixed-ranges)",
    )
    training.add_argument(
        "--fixed-ranges",
        dest="learn_ranges",
        action="store_false",
        help="keep the activation ranges where they start instead of training them with the weights (LSQ)",
    )
    training.add_argument(
        "--frozen-weights",
        dest="train_weights",
        action="store_false",
        help="keep every convolution and linear weight (those INT8 rounds to a grid, and those of --fallback blocks) "
        "as it is; train biases, normalization scales and, unless --fixed-ranges, activation ranges only",
    )
    training.add_argument(
        "--work",
        type=Path,
        default=None,
        help="checkpoints and the loss log (loss.jsonl) (default: runs/qat/<out>)",
    )
    training.add_argument(
        "--checkpoint-every", type=at_least(1), default=100, help="steps between checkpoints"
    )
    training.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --work")
    training.add_argument("--train-seed", type=int, default=0, help="seed of every training draw")


#: Each method's own flags, beside the shared ones (a test checks these match ``METHODS``).
METHOD_ARGUMENTS = {"ptq": _ptq_arguments, "qat": _qat_arguments, "bf16": _bf16_arguments}


TINY_DECODER_ABOUT = """mixdiff quantize tiny-decoder: the model's tiny decoder in INT8.

Quantizes the folder's tiny decoder (vae_tiny/, a TAESD-style AutoencoderTiny) by PT2E,
calibrated on the final latents of the FP32 model's own runs of the prompts, and compiles
it ahead of time for the model's own image size into <model>/vae_tiny/int8/. The server
then offers the decoder tiny-int8 beside tiny, for images of that size. The manifest
records its PSNR against the FP32 tiny decoder on held-out latents, and the BF16 one's.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="make quantized UNet (and tiny decoder) artifacts",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    methods = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    about = __doc__.split("\n", 2)[2]  # what every method does
    for name, info in METHODS.items():
        method = methods.add_parser(
            name,
            help=info.summary,
            description=textwrap.fill(f"mixdiff quantize {name}: {info.summary}.", 88) + f"\n\n{about}",
            formatter_class=HelpFormatter,
        )
        _shared_arguments(method)
        METHOD_ARGUMENTS[name](method)
        method.set_defaults(func=run)
    decoder = methods.add_parser(
        "tiny-decoder",
        help="the model's tiny decoder (vae_tiny/) in INT8, served as the decoder tiny-int8",
        description=TINY_DECODER_ABOUT,
        formatter_class=HelpFormatter,
    )
    decoder.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="diffusers pipeline folder with a vae_tiny/ (default: the embedded model, models/mixdiff-shapes)",
    )
    decoder.add_argument(
        "--prompts", type=at_least(2), default=32, help="calibration prompts, each one FP32 run; every 4th held out"
    )
    _prompt_file_argument(decoder)
    decoder.add_argument(
        "--steps", type=at_least(1), default=None, help="denoising steps of each run (default: the model's, else 30)"
    )
    decoder.add_argument(
        "--guidance-scale", type=float, default=None, help="guidance of each run (default: the model's, else 7.5)"
    )
    decoder.add_argument("--seed", type=int, default=0, help="seed of the first run; run i takes seed + i")
    decoder.set_defaults(func=run_tiny_decoder)


def _prompts(args) -> list[str]:
    if args.prompt_file is None:
        from shapes.dataset import calibration_prompts

        return calibration_prompts(args.prompts)
    return read_lines(args.prompt_file, "--prompt-file")[: args.prompts]


def _method(args, prompts: list[str]):
    """The method's config from its flags."""
    from quantization.methods import config_class
    from shapes.dataset import QAT_SEED

    config = config_class(args.method)
    if args.method != "qat":
        return config()
    if args.timestep_groups > 1:
        raise ValueError("qat trains one set of activation ranges: use --timestep-groups 1")
    return config(
        data=training_data(args, prompts, shapes_seed=QAT_SEED),
        data_size=args.data_size,
        timesteps=args.timesteps,
        caption_dropout=args.caption_dropout,
        guidance=args.kd_guidance,
        rollout=args.rollout,
        rollout_sampler_steps=args.rollout_sampler_steps,
        train_steps=args.train_steps,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        kd_weight=args.kd_weight,
        denoise_weight=args.denoise_weight,
        feature_kd_weight=args.feature_kd_weight,
        ema=args.ema,
        init_from_calibration=args.init_from_calibration,
        learn_ranges=args.learn_ranges,
        train_weights=args.train_weights,
        work=args.work or Path("runs") / "qat" / args.out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        seed=args.train_seed,
    )


def run_tiny_decoder(args: argparse.Namespace) -> int:
    model = Path(args.model)
    if not (model / "model_index.json").is_file():
        print(f"mixdiff quantize: {model} is not a diffusers pipeline folder (no model_index.json)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from app.pipeline.loader import (
        TINY_DECODER,
        ModelLoadError,
        generation_defaults,
        load_diffusers_pipeline,
        load_tiny_decoder,
    )
    from quantization import decoder as int8_decoder
    from quantization.runtime import DECODER_ARTIFACT

    out = model / TINY_DECODER / DECODER_ARTIFACT
    if out.exists():
        print(f"mixdiff quantize: {out} already exists; remove it to build it again", file=sys.stderr)
        return 2
    try:
        tiny = load_tiny_decoder(model)
        if tiny is None:
            raise ValueError(f"{model} has no tiny decoder ({TINY_DECODER}/)")
        defaults = generation_defaults(model)
        prompts = _prompts(args)
        pipe, _, _ = load_diffusers_pipeline(str(model))
        steps = defaults["steps"] if args.steps is None else args.steps
        guidance = defaults["guidance_scale"] if args.guidance_scale is None else args.guidance_scale
        logging.getLogger(__name__).info("%d FP32 runs of %d steps for the calibration latents", len(prompts), steps)
        latents = int8_decoder.final_latents(pipe, tiny, prompts, steps=steps, guidance_scale=guidance, seed=args.seed)
        source = {"prompts": len(prompts), "prompt_examples": prompts[:3], "steps": steps, "guidance_scale": guidance,
                  "seed": args.seed, "scheduler": type(pipe.scheduler).__name__}  # fmt: skip
        manifest = int8_decoder.build(tiny, latents, out, source=source)
    except (ModelLoadError, ValueError, OSError) as exc:
        print(f"mixdiff quantize: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("fidelity", "artifact_bytes", "build_seconds")}, indent=2))
    print(f"wrote {out}")
    return 0


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
    from app.pipeline.loader import ModelLoadError, generation_defaults, load_diffusers_pipeline
    from quantization.build import BuildOptions, build_artifact

    try:
        defaults = generation_defaults(model)
        prompts = _prompts(args)
        method = _method(args, prompts)
        pipe, _, _ = load_diffusers_pipeline(str(model))
        options = BuildOptions(
            sampler=args.sampler,
            samples=args.samples,
            steps=defaults["steps"] if args.steps is None else args.steps,
            guidance_scale=defaults["guidance_scale"] if args.guidance_scale is None else args.guidance_scale,
            seed=args.seed,
            fallback=args.fallback,
            fallback_budget=args.fallback_budget,
            timestep_groups=args.timestep_groups,
            scan_inputs=args.scan_inputs,
        )
        manifest = build_artifact(method, pipe, prompts, out, options)
    except (ModelLoadError, ValueError, OSError) as exc:
        print(f"mixdiff quantize: {exc}", file=sys.stderr)
        return 2
    summary = {k: manifest[k] for k in ("method", "fidelity", "load_seconds", "artifact_bytes", "build_seconds")}
    summary["fallback"] = manifest["fallback"]["layers"]
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0
