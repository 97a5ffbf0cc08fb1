"""torchao's INT8 attention for x86 Inductor against BF16 flash attention, at SD 1.5's sizes.

    python bench/int8_attention.py [--rounds 7]

torchao registers ``torch.ops.torchao.qscaled_dot_product`` (u8 query, key and value, the
softmax quantized to u8 inside, u8 output) with an Inductor lowering to a C++ template
(`torchao.prototype.inductor.qsdpa_lowering`); its wheel carries no CPU kernel for the op
itself, so it runs only compiled. This times the compiled op against
``scaled_dot_product_attention`` in BF16 (ATen's flash attention, what both UNets run
now) on the self-attention of each of SD 1.5's latent levels at 512x512 (CFG batch 2,
8 heads), interleaved, and reports each one's error against FP32 attention over the
same dequantized inputs. Scales are calibrated on the inputs themselves: absmax for
query, key, value and output, the largest probability for the softmax.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
import torchao.prototype.inductor.qsdpa_lowering  # noqa: F401  (registers the lowering)

from bench.unet_step import interleaved, rel_error

#: (tokens, head_dim) of SD 1.5's self-attention at 64x64, 32x32 and 16x16 latents.
LEVELS = ((4096, 40), (1024, 80), (256, 160))
HEADS, BATCH = 8, 2


def _quantize(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """u8 with zero point 128 and the absmax scale; returns the tensor and its scale."""
    scale = x.abs().max().item() / 127
    return torch.clamp(torch.round(x / scale) + 128, 0, 255).to(torch.uint8), scale


def _dequantize(x: torch.Tensor, scale: float) -> torch.Tensor:
    return (x.float() - 128) * scale


def level(tokens: int, head_dim: int, rounds: int) -> dict:
    torch.manual_seed(0)
    # [batch, heads, tokens, head_dim] views of [batch, tokens, heads, head_dim], as the UNet's are.
    q, k, v = (torch.randn(BATCH, tokens, HEADS, head_dim).transpose(1, 2) for _ in range(3))
    (qu, qs), (ku, ks), (vu, vs) = (_quantize(t) for t in (q, k, v))
    qd, kd, vd = _dequantize(qu, qs), _dequantize(ku, ks), _dequantize(vu, vs)
    reference = F.scaled_dot_product_attention(qd, kd, vd)
    scale = head_dim**-0.5
    top = max(torch.softmax(qd[:, :, i : i + 256] @ kd.transpose(-1, -2) * scale, -1).max().item()
              for i in range(0, tokens, 256))
    out_scale = reference.abs().max().item() / 127

    def qsdpa(a, b, c):
        return torch.ops.torchao.qscaled_dot_product.default(
            a, b, c, None, 0.0, False, scale, qs, 128, ks, 128, vs, 128, top / 255, 0, out_scale, 128
        )

    compiled = torch.compile(qsdpa, dynamic=False)
    qb, kb, vb = (t.bfloat16() for t in (qd, kd, vd))
    steps = {
        "bf16 flash attention": lambda: F.scaled_dot_product_attention(qb, kb, vb),
        "int8 qsdpa (Inductor template)": lambda: compiled(qu, ku, vu),
    }
    outputs = {
        "bf16 flash attention": steps["bf16 flash attention"]().float(),
        "int8 qsdpa (Inductor template)": _dequantize(compiled(qu, ku, vu), out_scale),
    }
    times = interleaved(steps, rounds)
    return {
        name: {
            "ms": 1000 * statistics.median(times[name]),
            "rel_error": rel_error(outputs[name], reference),
        }
        for name in steps
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"| tokens x head_dim | variant | ms (median of {args.rounds}) | vs bf16 | rel. error vs fp32 |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for tokens, head_dim in LEVELS:
            result = level(tokens, head_dim, args.rounds)
            base = result["bf16 flash attention"]["ms"]
            for name, r in result.items():
                print(f"| {tokens} x {head_dim} | {name} | {r['ms']:.1f} | {r['ms'] / base:.2f}x | "
                      f"{r['rel_error']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
