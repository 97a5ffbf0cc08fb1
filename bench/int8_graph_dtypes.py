"""Which dtypes the INT8 UNet graph computes in, op by op, as the artifacts compile it.

    python bench/int8_graph_dtypes.py [UNET_FOLDER] [--quantizer torchao]   # default: models/mixdiff-shapes/unet

The UNet is exported, quantized (one random calibration input) and exported again under
BF16 autocast, exactly as ``mixdiff quantize ptq`` does before AOTInductor compiles it,
with the artifacts' quantizer (``quantization.quantizer.UNetQuantizer``) or, with
``--quantizer torchao``, torchao's default ``X86InductorQuantizer``. Prints, per op and
input/output dtypes, how many nodes there are, then which ops feed the FP32 inputs of
additions and GroupNorms.
Timings are not the point: it shows where the INT8 graph leaves BF16 (the BF16 UNet
runs every one of these ops in BF16).
"""

from __future__ import annotations

import argparse
import collections

import torch
from diffusers import UNet2DConditionModel

from quantization.graph import export_unet
from quantization.inputs import BATCH, UNetInputs
from quantization.methods.ptq import make_quantizer, quantize_graph
from quantization.package import export_bf16
from quantization.quantizer import torchao_default

OPS = ("add", "conv2d", "linear", "group_norm", "layer_norm", "silu", "gelu", "mul", "div",
       "scaled_dot_product_attention", "cat")


def _dtype(node) -> str:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return str(value.dtype).removeprefix("torch.") if isinstance(value, torch.Tensor) else "-"


def _op(node) -> str:
    return str(node.target).split(".")[-2] if node.op == "call_function" and "." in str(node.target) else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("unet", nargs="?", default="models/mixdiff-shapes/unet")
    parser.add_argument("--tokens", type=int, default=77, help="text tokens of the example input")
    parser.add_argument("--quantizer", choices=("artifacts", "torchao"), default="artifacts")
    args = parser.parse_args()
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(args.unet, local_files_only=True).eval()
    config = unet.config
    size = config.sample_size
    example = UNetInputs(
        torch.randn(BATCH, config.in_channels, size, size),
        torch.full((BATCH,), 500.0),
        torch.randn(BATCH, args.tokens, config.cross_attention_dim),
    )
    quantizer = torchao_default() if args.quantizer == "torchao" else make_quantizer()
    converted = quantize_graph(export_unet(unet, example), quantizer, [example])
    graph = export_bf16(converted, example).graph_module.graph

    census, feeders = collections.Counter(), collections.Counter()
    for node in graph.nodes:
        op = _op(node)
        if op not in OPS:
            continue
        inputs = ", ".join(_dtype(a) for a in node.args if isinstance(a, torch.fx.Node))
        census[(op, inputs, _dtype(node))] += 1
        if op in ("add", "group_norm") and _dtype(node) == "float32":
            for arg in node.args if op == "add" else node.args[:1]:  # a GroupNorm's input, not its weights
                if isinstance(arg, torch.fx.Node) and _dtype(arg) == "float32":
                    feeders[(op, _op(arg) or arg.op)] += 1

    print(f"{args.unet}, {args.quantizer} quantizer: INT8 graph under BF16 autocast\n\n| op | inputs | output | nodes |\n|---|---|---|---|")
    for (op, inputs, output), n in sorted(census.items()):
        print(f"| {op} | {inputs} | {output} | {n} |")
    print("\n| FP32 op | its FP32 input comes from | nodes |\n|---|---|---|")
    for (op, source), n in sorted(feeders.items()):
        print(f"| {op} | {source} | {n} |")


if __name__ == "__main__":
    main()
