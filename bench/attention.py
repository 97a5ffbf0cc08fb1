"""mixdiff's fused attention against ATen's SDPA, at the attention sizes of SD 1.5 at 512x512.

    python bench/attention.py [--rounds 7] [--error-sources] [--shape 9216x9216x64 ...]

Times, interleaved round after round (median), ``scaled_dot_product_attention`` in BF16
(what diffusers' processor runs), ``mixdiff.attention`` (BF16, AVX-512),
``mixdiff.int8_attention`` (both products in INT8, AVX-512 VNNI) and ``mixdiff.attention``
with its products in AMX tiles (``amx``) on each self- and cross-attention shape of
SD 1.5's UNet (CFG batch 2, 8 heads, 77 text tokens), with the number of such layers
in one UNet step, and each one's relative L2 error against FP32 SDPA over the same
BF16 inputs. Inputs are random normal, keys with an offset (as real keys have, and
which INT8 scores must survive). The last rows add the layers up: attention's time
in one UNet step. ``--error-sources`` then splits ``mixdiff.int8_attention``'s error at
SD 1.5's largest attention into its roundings, each simulated alone in FP32. The ops run
the kernels here even where they compute SDPA by default (a CPU with AMX: the first line
says which they would run). ``--shape TOKENSxKEYSxHEAD_DIM`` (repeatable) times those
shapes instead, once each (e.g. SD 2.1's and SDXL's at their sizes).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import kernels
from bench.unet_step import against_reference, host_line
from kernels.attention import attention_backend

#: (query tokens, key tokens, head_dim, layers per SD 1.5 step) at 64x64, 32x32 and 16x16 latents and the mid-block.
SHAPES = (
    (4096, 4096, 40, 5), (4096, 77, 40, 5),
    (1024, 1024, 80, 5), (1024, 77, 80, 5),
    (256, 256, 160, 5), (256, 77, 160, 5),
    (64, 64, 160, 1), (64, 77, 160, 1),
)
HEADS, BATCH = 8, 2
VARIANTS = ("sdpa", "mixdiff.attention", "mixdiff.int8_attention", "mixdiff.attention amx")


def attention_shape(text: str) -> tuple[int, int, int]:
    """``TOKENSxKEYSxHEAD_DIM``, e.g. ``9216x9216x64``."""
    try:
        tokens, keys, head_dim = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not TOKENSxKEYSxHEAD_DIM: {text!r}") from None
    return tokens, keys, head_dim


def in_tiles(call):
    """``call`` with the ops' products in AMX tiles (where the CPU has AMX; else the same kernels)."""
    with attention_backend("amx"):
        return call()


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
        "mixdiff.attention amx": lambda: in_tiles(lambda: torch.ops.mixdiff.attention(q, k, v, scale)),
    }
    return against_reference(calls, F.scaled_dot_product_attention(q.float(), k.float(), v.float()), rounds)


def error_sources(tokens: int = 4096, head_dim: int = 40, block: int = 64) -> dict[str, float]:
    """Relative L2 error against FP32 attention of each rounding of the INT8 kernel alone,
    simulated in FP32 on the benchmark's inputs: the values per channel (centred, int8), the
    probabilities per block of ``block`` keys (u8, the block's largest at 255), both, and the
    probabilities at one scale per row instead."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(BATCH, tokens, HEADS, head_dim, generator=g).transpose(1, 2).bfloat16().float()
    k = (torch.randn(BATCH, tokens, HEADS, head_dim, generator=g) + 0.5).transpose(1, 2).bfloat16().float()
    v = torch.randn(BATCH, tokens, HEADS, head_dim, generator=g).transpose(1, 2).bfloat16().float()
    scores = q @ k.transpose(-1, -2) * head_dim**-0.5
    probs = torch.exp(scores - scores.amax(-1, keepdim=True))
    reference = probs @ v / probs.sum(-1, keepdim=True)

    def u8(p: torch.Tensor, width: int) -> torch.Tensor:
        blocks = p.unflatten(-1, (-1, width))
        top = blocks.amax(-1, keepdim=True)
        return ((blocks / top * 255).round() * top / 255).flatten(-2)

    mean = v.mean(-2, keepdim=True)
    step = (v - mean).abs().amax(-2, keepdim=True) / 127
    v8 = ((v - mean) / step).round() * step + mean
    cases = {
        "values int8 per channel": (probs, v8),
        f"probabilities u8 per {block} keys": (u8(probs, block), v),
        "both (the kernel's)": (u8(probs, block), v8),
        "probabilities u8 per row": (u8(probs, tokens), v),
    }
    return {
        name: float(((p @ vv / p.sum(-1, keepdim=True)) - reference).norm() / reference.norm())
        for name, (p, vv) in cases.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--error-sources", action="store_true", help="split the INT8 kernel's error by rounding")
    parser.add_argument("--shape", type=attention_shape, action="append", metavar="TOKENSxKEYSxHEAD_DIM",
                        help="time this shape instead of SD 1.5's (repeatable)")
    args = parser.parse_args()
    shapes = [(*shape, 1) for shape in args.shape] if args.shape else SHAPES
    kernels.load()
    print(host_line())
    print()
    print(f"| q x k tokens, head_dim (layers) | {' | '.join(VARIANTS)} (ms, median of {args.rounds}; vs sdpa; "
          "rel. error vs fp32) |")
    print("|---|" + "---|" * len(VARIANTS))
    total = dict.fromkeys(VARIANTS, 0.0)
    with torch.no_grad(), attention_backend("fused"):
        for tokens, keys, head_dim, layers in shapes:
            result = shape(tokens, keys, head_dim, args.rounds)
            base = result["sdpa"]["ms"]
            cells = " | ".join(
                f"{r['ms']:.1f} ({r['ms'] / base:.2f}x, {r['rel_error']:.1e})" for r in result.values()
            )
            print(f"| {tokens} x {keys}, {head_dim} (x{layers}) | {cells} |", flush=True)
            for name, r in result.items():
                total[name] += layers * r["ms"]
    if not args.shape:
        cells = " | ".join(f"{t:.0f} ({t / total['sdpa']:.2f}x)" for t in total.values())
        print(f"| one UNet step | {cells} |")
    if args.error_sources:
        print()
        print("mixdiff.int8_attention's roundings alone, 4096 x 4096 keys, head_dim 40 (rel. L2 vs fp32):")
        for name, error in error_sources().items():
            print(f"  {name}: {error:.1e}")


if __name__ == "__main__":
    main()
