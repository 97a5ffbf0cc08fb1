"""mixdiff's fused attention against ATen's SDPA, at the attention sizes of SD 1.5 at 512x512.

    python bench/attention.py [--rounds 7]

Times, interleaved round after round (median), ``scaled_dot_product_attention`` in BF16
(what diffusers' processor runs), ``mixdiff.attention`` (BF16) and
``mixdiff.int8_attention`` (q·kᵀ in INT8) on each self- and cross-attention shape of
SD 1.5's UNet (CFG batch 2, 8 heads, 77 text tokens), with the number of such layers
in one UNet step, and each one's relative L2 error against FP32 SDPA over the same
BF16 inputs. Inputs are random normal, keys with an offset (as real keys have, and
which INT8 scores must survive). The last rows add the layers up: attention's time
in one UNet step.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import kernels
from bench.unet_step import against_reference

#: (query tokens, key tokens, head_dim, layers per SD 1.5 step) at 64x64, 32x32 and 16x16 latents and the mid-block.
SHAPES = (
    (4096, 4096, 40, 5), (4096, 77, 40, 5),
    (1024, 1024, 80, 5), (1024, 77, 80, 5),
    (256, 256, 160, 5), (256, 77, 160, 5),
    (64, 64, 160, 1), (64, 77, 160, 1),
)
HEADS, BATCH = 8, 2
VARIANTS = ("sdpa", "mixdiff.attention", "mixdiff.int8_attention")


def shape(tokens: int, keys: int, head_dim: int, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(BATCH, tokens, HEADS, head_dim, generator=g).transpose(1, 2).bfloat16()
    k = (torch.randn(BATCH, keys, HEADS, head_dim, generator=g) + 0.5).transpose(1, 2).bfloat16()
    v = torch.randn(BATCH, keys, HEADS, head_dim, generator=g).transpose(1, 2).bfloat16()
    scale = head_dim**-0.5
    calls = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "mixdiff.attention": lambda: torch.ops.mixdiff.attention(q, k, v, scale),
        "mixdiff.int8_attention": lambda: torch.ops.mixdiff.int8_attention(q, k, v, scale),
    }
    return against_reference(calls, F.scaled_dot_product_attention(q.float(), k.float(), v.float()), rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    kernels.load()
    print(f"AVX-512 BF16 kernels: {torch.ops.mixdiff.accelerated()}, {torch.get_num_threads()} threads")
    print()
    print(f"| q x k tokens, head_dim (layers) | {' | '.join(VARIANTS)} (ms, median of {args.rounds}; vs sdpa; "
          "rel. error vs fp32) |")
    print("|---|" + "---|" * len(VARIANTS))
    total = dict.fromkeys(VARIANTS, 0.0)
    with torch.no_grad():
        for tokens, keys, head_dim, layers in SHAPES:
            result = shape(tokens, keys, head_dim, args.rounds)
            base = result["sdpa"]["ms"]
            cells = " | ".join(
                f"{r['ms']:.1f} ({r['ms'] / base:.2f}x, {r['rel_error']:.1e})" for r in result.values()
            )
            print(f"| {tokens} x {keys}, {head_dim} (x{layers}) | {cells} |", flush=True)
            for name, r in result.items():
                total[name] += layers * r["ms"]
    cells = " | ".join(f"{t:.0f} ({t / total['sdpa']:.2f}x)" for t in total.values())
    print(f"| one UNet step | {cells} |")


if __name__ == "__main__":
    main()
