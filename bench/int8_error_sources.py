"""Where an INT8 UNet's error comes from: its weights or its activations, and which activations.

The model's UNet is fake-quantized as ``mixdiff quantize ptq`` quantizes it (the artifacts'
quantizer, PTQ's activation ranges on the FP32 model's own trajectories), and its error
against the FP32 UNet is measured on held-out trajectory inputs, on the classifier-free-
guided output the sampler uses: with INT8 weights only, INT8 activations only, and both;
then each activation quantized alone on top of the INT8 weights, named by the layer that
reads it (the increments add up to the activations' total within a few per cent). With
``--images N`` also 1 - SSIM of N decoded images against FP32 of the same seed, all-INT8 and
with the first and last ``--k`` steps in FP32 (the mixed schedule), for the same settings
(everything unquantized runs in FP32, so there is no BF16 floor).

Two more settings ask what finer activation grids would give, simulated in FP32: each
activation read by a linear or a 1x1 convolution rounded per token (one uint8 range per
row of features, taken from the row itself, as dynamic per-token INT8 kernels do; the
INT8 product then still factors into one scale per row and per output channel), the 3x3
convolutions' inputs kept per tensor as PTQ rounds them; and every activation per token
(a bound: a 3x3 convolution reads nine pixels with nine scales, which no INT8 kernel
factors).

    python -m bench.int8_error_sources --model models/mixdiff-shapes --fallback conv_in,up_blocks.2.resnets.1
"""

from __future__ import annotations

import argparse
import copy
import logging
import operator
import time

import numpy as np
import torch

log = logging.getLogger("int8_error_sources")


class PerToken(torch.nn.Module):
    """Fake quantization to uint8 with one range per token (per row of ``dim``'s features), from
    the token itself: dynamic per-token activation quantization."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.amin(self.dim, keepdim=True).clamp(max=0)
        high = x.amax(self.dim, keepdim=True).clamp(min=0)
        scale = ((high - low) / 255).clamp(min=1e-12)
        zero = (-low / scale).round()
        return ((x / scale).round() + zero).clamp(0, 255).sub(zero).mul(scale)


def _reader_kind(graph: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    """``"linear"``, ``"conv1x1"``, ``"conv"`` (larger kernels) or ``"other"``: what reads an activation."""
    kinds = set()
    for user in node.users:
        name = str(user.target)
        if "linear" in name:
            kinds.add("linear")
        elif "conv" in name:
            weight = user.args[1]
            while weight.op == "call_module":  # the weight's fake quantizer
                weight = weight.args[0]
            shape = operator.attrgetter(weight.target)(graph).shape if weight.op == "get_attr" else None
            kinds.add("conv1x1" if shape is not None and tuple(shape[2:]) == (1, 1) else "conv")
        else:
            kinds.add("other")
    return kinds.pop() if len(kinds) == 1 else "other"


def _fake_quantizers(student: torch.fx.GraphModule) -> list[tuple[str, torch.nn.Module, str, str]]:
    """``(name, fake quantizer, layer that reads it, what kind of op reads it)`` in graph order."""
    modules = dict(student.named_children())
    found = []
    for node in student.graph.nodes:
        if node.op == "call_module" and node.target.startswith("activation_post_process_"):
            user = next(iter(node.users))
            stack = [path for path, _ in (user.meta.get("nn_module_stack") or {}).values()]
            layer = stack[-1].removeprefix("unet.") if stack else "?"
            found.append((node.target, modules[node.target], layer, _reader_kind(student, node)))
    return found


@torch.no_grad()
def guided_rel_mse(model, inputs, references: list[torch.Tensor], scale: float) -> float:
    """Relative MSE of ``model``'s guided outputs on ``inputs`` against the FP32 ``references`` of them."""
    from quantization.methods.qat import guided

    num = sum((guided(model(*item.args()), scale) - ref).pow(2).sum().item() for item, ref in zip(inputs, references))
    return num / sum(ref.pow(2).sum().item() for ref in references)


@torch.no_grad()
def image_loss(
    pipe, model, reference_images, prompts, guidance: float, steps: int = 50, high=None, k: int = 0
) -> list[float]:
    """1 - SSIM against ``reference_images`` of ``model``'s DDIM images of ``prompts`` (seed i each);
    with ``high``, its first and last ``k`` steps run by ``high`` instead."""
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
        for n, t in enumerate(scheduler.timesteps):
            unet = high if high is not None and (n < k or n >= steps - k) else model
            x = scheduler.step(guided(unet(torch.cat([x, x]), t.float().expand(2), text), guidance), t, x).prev_sample
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
    parser.add_argument("--top", type=int, default=12, help="activations listed, each measured alone (0: none)")
    parser.add_argument("--images", type=int, default=0, help="also the image loss of this many held-out prompts")
    parser.add_argument("--k", type=int, default=5, help="FP32 steps at each end of the mixed schedule's images")
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
    activations = [(n, q, layer, kind) for n, q, layer, kind in quantizers if q.qscheme == torch.per_tensor_affine]
    weights = [q for _, q, _, _ in quantizers if q.qscheme != torch.per_tensor_affine]
    per_token = {
        name: PerToken(-1 if kind == "linear" else 1) for name, _, _, kind in activations if kind != "other"
    }
    factorable = {name for name, _, _, kind in activations if kind in ("linear", "conv1x1")}
    for q in weights:
        q.disable_observer()
    kinds = [kind for *_, kind in activations]
    log.info("%d activation quantizers (%s) and %d weight quantizers; calibrated in %.0f s", len(activations),
             ", ".join(f"{kinds.count(k)} read by {k}" for k in sorted(set(kinds))), len(weights),
             time.perf_counter() - start)  # fmt: skip

    def setting(weights_on: bool, activations_on: set[str] | None, tokens: set[str] = frozenset()):
        for q in weights:
            q.enable_fake_quant(weights_on)
        for name, q, _, _ in activations:
            q.enable_fake_quant(activations_on is None or name in activations_on)
            setattr(student, name, per_token[name] if name in tokens else q)

    settings = {
        "weights only": (True, set()),
        "activations only": (False, None),
        "both": (True, None),
        "both, linear and 1x1 inputs per token": (True, None, factorable),
        "both, every input per token": (True, None, set(per_token)),
    }
    print(f"\nINT8 error sources of {args.model} ({cpu_model()}), kept in BF16: {', '.join(fallback) or 'nothing'}")
    print(f"held-out trajectory inputs: {len(held)}; error of the output guided at {args.scale}\n")
    with torch.no_grad():
        references = [guided(graph(*item.args()), args.scale) for item in held]
    totals = {}
    for label, chosen in settings.items():
        setting(*chosen)
        totals[label] = guided_rel_mse(student, held, references, args.scale)
    print("| INT8 | guided rel. MSE |\n|---|---|")
    for label, value in totals.items():
        print(f"| {label} | {value:.3e} |")

    if args.top:
        increments = []
        for name, _, layer, _ in activations:
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
              f"50 DDIM steps, guidance {args.scale}; all steps INT8, and the first and last {args.k} "
              "FP32:\n")  # fmt: skip
        print("| INT8 | all-INT8 mean | median | images > 0.03 | k=%d mean | median | images > 0.03 |" % args.k)
        print("|---|---|---|---|---|---|---|")
        for label, chosen in settings.items():
            setting(*chosen)
            row = [label]
            for high in (None, graph):
                losses = image_loss(pipe, student, reference, prompts, args.scale, high=high, k=args.k)
                row += [f"{np.mean(losses):.4f}", f"{np.median(losses):.4f}", str(sum(v > 0.03 for v in losses))]
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
