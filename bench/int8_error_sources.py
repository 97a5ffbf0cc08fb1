"""Where an INT8 UNet's error comes from: its weights or its activations, and which activations.

The model's UNet is fake-quantized as ``mixdiff quantize ptq`` quantizes it (the artifacts'
quantizer, PTQ's activation ranges on the FP32 model's own trajectories), and its error
against the FP32 UNet is measured on held-out trajectory inputs, on the classifier-free-
guided output the sampler uses: with INT8 weights only, INT8 activations only, and both;
then each activation quantized alone on top of the INT8 weights, named by the layer that
reads it (the increments add up to the activations' total within a few per cent). With
``--images N`` also 1 - SSIM of N decoded images against FP32 of the same seed, all-INT8, for
the same three settings (everything unquantized runs in FP32, so there is no BF16 floor).

    python -m bench.int8_error_sources --model models/mixdiff-shapes --fallback conv_in,up_blocks.2.resnets.1
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import numpy as np
import torch

log = logging.getLogger("int8_error_sources")


def _fake_quantizers(student: torch.fx.GraphModule) -> list[tuple[str, torch.nn.Module, str]]:
    """``(name, fake quantizer, layer that reads it)`` in graph order."""
    modules = dict(student.named_children())
    found = []
    for node in student.graph.nodes:
        if node.op == "call_module" and node.target.startswith("activation_post_process_"):
            user = next(iter(node.users))
            stack = [path for path, _ in (user.meta.get("nn_module_stack") or {}).values()]
            found.append((node.target, modules[node.target], stack[-1].removeprefix("unet.") if stack else "?"))
    return found


@torch.no_grad()
def guided_rel_mse(model, inputs, references: list[torch.Tensor], scale: float) -> float:
    """Relative MSE of ``model``'s guided outputs on ``inputs`` against the FP32 ``references`` of them."""
    from quantization.methods.qat import guided

    num = sum((guided(model(*item.args()), scale) - ref).pow(2).sum().item() for item, ref in zip(inputs, references))
    return num / sum(ref.pow(2).sum().item() for ref in references)


@torch.no_grad()
def image_loss(pipe, model, reference_images, prompts, guidance: float, steps: int = 50) -> list[float]:
    """1 - SSIM against ``reference_images`` of ``model``'s DDIM images of ``prompts`` (seed i each)."""
    from diffusers import DDIMScheduler

    from common.training import embed
    from quantization.methods.qat import guided
    from shapes.metrics import ssim

    empty, states = embed(pipe, [""]), embed(pipe, prompts)
    images = []
    for i in range(len(prompts)):
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        config = pipe.unet.config
        shape = (1, config.in_channels, config.sample_size, config.sample_size)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(i))
        text = torch.cat([empty, states[i : i + 1]])
        for t in scheduler.timesteps:
            x = scheduler.step(guided(model(torch.cat([x, x]), t.float().expand(2), text), guidance), t, x).prev_sample
        image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample[0]
        images.append(((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    if reference_images is None:
        return images
    return [1 - ssim(a, b) for a, b in zip(images, reference_images)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/mixdiff-shapes")
    parser.add_argument("--fallback", default="", help="layers kept in BF16, as mixdiff quantize --fallback")
    parser.add_argument("--prompts", type=int, default=16, help="calibration prompts (the data set's)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="of the calibration runs")
    parser.add_argument("--scale", type=float, default=5.0, help="guidance the error is measured at")
    parser.add_argument("--top", type=int, default=12, help="activations listed")
    parser.add_argument("--images", type=int, default=0, help="also the image loss of this many held-out prompts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from app.pipeline.loader import load_diffusers_pipeline
    from bench.unet_step import cpu_model
    from quantization import calibration
    from quantization.build import _manual_fallback, split_holdout
    from quantization.graph import export_unet
    from quantization.methods.ptq import make_quantizer
    from quantization.methods.qat import guided, start_from_ptq
    from shapes import dataset

    pipe, _, _ = load_diffusers_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet.eval()
    fallback = _manual_fallback(unet, args.fallback)
    start = time.perf_counter()
    captured = calibration.capture(
        pipe, dataset.calibration_prompts(args.prompts), steps=50, guidance_scale=args.guidance_scale
    )
    calib, held = split_holdout(captured, 8)
    graph = export_unet(unet, calib[0])
    # the fake-quantized UNet with PTQ's activation ranges, held fixed; the weights' ranges follow the weights
    student = prepare_qat_pt2e(copy.deepcopy(graph), make_quantizer(fallback, is_qat=True))
    start_from_ptq(student, graph, fallback, calib)
    with torch.no_grad():
        student(*calib[0].args())
    quantizers = _fake_quantizers(student)
    activations = [(n, q, layer) for n, q, layer in quantizers if q.qscheme == torch.per_tensor_affine]
    weights = [q for _, q, _ in quantizers if q.qscheme != torch.per_tensor_affine]
    for q in weights:
        q.disable_observer()
    log.info("%d activation and %d weight quantizers; calibrated in %.0f s", len(activations), len(weights),
             time.perf_counter() - start)  # fmt: skip

    def setting(weights_on: bool, activations_on: set[str] | None):
        for q in weights:
            q.enable_fake_quant(weights_on)
        for name, q, _ in activations:
            q.enable_fake_quant(activations_on is None or name in activations_on)

    settings = {"weights only": (True, set()), "activations only": (False, None), "both": (True, None)}
    print(f"\nINT8 error sources of {args.model} ({cpu_model()}), kept in BF16: {', '.join(fallback) or 'nothing'}")
    print(f"held-out trajectory inputs: {len(held)}; error of the output guided at {args.scale}\n")
    with torch.no_grad():
        references = [guided(graph(*item.args()), args.scale) for item in held]
    totals = {}
    for label, (w, a) in settings.items():
        setting(w, a)
        totals[label] = guided_rel_mse(student, held, references, args.scale)
    print("| INT8 | guided rel. MSE |\n|---|---|")
    for label, value in totals.items():
        print(f"| {label} | {value:.3e} |")

    increments = []
    for name, _, layer in activations:
        setting(True, {name})
        increments.append((guided_rel_mse(student, held, references, args.scale) - totals["weights only"], layer))
    increments.sort(reverse=True)
    added = sum(v for v, _ in increments)
    print(f"\nOne activation at a time on INT8 weights (increments add up to {added:.3e}; all together "
          f"{totals['both'] - totals['weights only']:.3e}):\n")  # fmt: skip
    print("| activation read by | increment | share |\n|---|---|---|")
    for value, layer in increments[: args.top]:
        print(f"| `{layer}` | {value:.2e} | {100 * value / added:.1f}% |")

    if args.images:
        prompts = [p.text for p in dataset.prompts(args.images, 2024)]
        reference = image_loss(pipe, graph, None, prompts, args.scale)
        print(f"\n1 - SSIM against FP32, {args.images} prompts (seed 2024), seeds 0..{args.images - 1}, "
              f"50 DDIM steps, guidance {args.scale}, all steps INT8:\n")  # fmt: skip
        print("| INT8 | mean | median | images > 0.03 |\n|---|---|---|---|")
        for label, (w, a) in settings.items():
            setting(w, a)
            losses = image_loss(pipe, student, reference, prompts, args.scale)
            print(f"| {label} | {np.mean(losses):.4f} | {np.median(losses):.4f} | {sum(v > 0.03 for v in losses)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
