"""mixdiff's GroupNorm (+SiLU) against ATen's, on SD 1.5's norms and in its eager BF16 UNet.

    python bench/group_norm.py [--rounds 7]

First every GroupNorm of one SD 1.5 UNet step (random weights, CFG batch 2, 64x64
latents, BF16 channels-last, as the server's eager BF16 UNet runs): its input shapes and
whether a SiLU follows, captured by hooks, then ``F.group_norm`` (+ ``F.silu``) against
``mixdiff.group_norm`` on each distinct shape, interleaved, with the relative error of
each against FP32 and the sum over the step. Then the whole eager step with ATen's
norms against ``use_fused_group_norm``'s, interleaved (both with the fused attention).
"""

from __future__ import annotations

import argparse
import collections
import copy
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from app.pipeline.variants import EagerUNet
from bench.unet_step import against_reference, host_line, interleaved, random_inputs, sd15_unet
from kernels.group_norm import use_fused_group_norm


def captured_norms(unet: EagerUNet, inputs) -> collections.Counter:
    """``(channels, height, width, groups, silu) -> count`` over one step of ``unet``;
    ``silu``: the next module run is a SiLU on the norm's output."""
    calls = []
    hooks = [
        m.register_forward_hook(lambda m, args, out: calls.append((m, tuple(args[0].shape))))
        for m in unet.unet.modules()
        if isinstance(m, (nn.GroupNorm, nn.SiLU))
    ]
    unet(*inputs)
    for h in hooks:
        h.remove()
    shapes = collections.Counter()
    for i, (module, shape) in enumerate(calls):
        if isinstance(module, nn.GroupNorm):
            silu = i + 1 < len(calls) and isinstance(calls[i + 1][0], nn.SiLU) and calls[i + 1][1] == shape
            shapes[(shape[1], shape[2], shape[3], module.num_groups, silu)] += 1
    return shapes


def one_shape(channels, height, width, groups, silu, rounds) -> dict:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, channels, height, width, generator=g) * 2 + 0.5).to(memory_format=torch.channels_last)
    x = x.bfloat16()
    weight, bias = torch.randn(channels, generator=g).bfloat16(), torch.randn(channels, generator=g).bfloat16()

    def aten():
        y = F.group_norm(x, groups, weight, bias, 1e-5)
        return F.silu(y) if silu else y

    def fused():
        return torch.ops.mixdiff.group_norm(x, groups, weight, bias, 1e-5, silu)

    reference = F.group_norm(x.float(), groups, weight.float(), bias.float(), 1e-5)
    reference = F.silu(reference) if silu else reference
    return against_reference({"aten": aten, "fused": fused}, reference, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    kernels.load()
    print(host_line())
    unet = sd15_unet()
    sample = random_inputs(unet, 500.0, seed=0)
    inputs = (sample.sample, sample.timestep, sample.encoder_hidden_states)
    aten_unet = EagerUNet(unet, "bf16", in_place=True, fused_group_norm=False)
    shapes = captured_norms(aten_unet, inputs)

    print()
    print("| channels, HxW, groups, +SiLU (per step) | ATen (ms) | mixdiff (ms, vs ATen) | rel. error vs FP32: "
          "ATen | mixdiff |")
    print("|---|---|---|---|---|")
    total = {"aten": 0.0, "fused": 0.0}
    with torch.inference_mode():
        for (channels, height, width, groups, silu), count in sorted(shapes.items()):
            r = one_shape(channels, height, width, groups, silu, args.rounds)
            print(
                f"| {channels}, {height}x{width}, {groups}, {'yes' if silu else 'no'} (x{count}) "
                f"| {r['aten']['ms']:.2f} | {r['fused']['ms']:.2f} ({r['fused']['ms'] / r['aten']['ms']:.2f}x) "
                f"| {r['aten']['rel_error']:.1e} | {r['fused']['rel_error']:.1e} |",
                flush=True,
            )
            for name in total:
                total[name] += count * r[name]["ms"]
    ratio = total["fused"] / total["aten"]
    print(f"| all of one step | {total['aten']:.0f} | {total['fused']:.0f} ({ratio:.2f}x) | | |")

    fused_unet = copy.deepcopy(aten_unet)
    use_fused_group_norm(fused_unet.unet)
    times = interleaved({"aten": lambda: aten_unet(*inputs), "fused": lambda: fused_unet(*inputs)}, args.rounds)
    aten, fused = (statistics.median(times[n]) for n in ("aten", "fused"))
    print()
    print(f"Eager BF16 UNet step, median of {args.rounds} interleaved rounds: ATen norms {aten:.3f} s, "
          f"mixdiff.group_norm {fused:.3f} s ({fused / aten:.3f}x)")


if __name__ == "__main__":
    main()
