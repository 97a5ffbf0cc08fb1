"""The INT8 UNet with its dequantized residual inputs cast to BF16, against the INT8 UNet as it ships.

    python bench/int8_bf16_residuals.py [--rounds 5]

In the graph ``quantize ptq`` compiles, a convolution or linear that adds a residual gets
that residual dequantized to FP32, and autocast leaves additions alone: the sum, and the
residual stream after it, stay FP32 (``bench/int8_graph_dtypes.py``). Here a cast to
BF16 is put between each such dequantization and its addition, so the stream stays
BF16 as in the BF16 UNet. Both graphs are built as AOTInductor packages the way the
artifacts are (``quantization.artifact.build_package``), beside BF16 compiled, on SD
1.5's UNet architecture with random weights (CFG batch 2, 64x64 latents, calibrated as
``mixdiff bench`` calibrates); steps are timed interleaved. Also prints each INT8
graph's output error against the FP32 UNet. Builds take about 10 minutes on 2 cores. Run
it as the server's workers run (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from app.pipeline.variants import EagerUNet
from quantization.artifact import build_package, load_package
from quantization.bench import int8_graph, interleaved, random_inputs, ratio_table, sd15_unet

DEQUANTIZE = (
    torch.ops.quantized_decomposed.dequantize_per_tensor.default,
    torch.ops.quantized_decomposed.dequantize_per_tensor.tensor,
)


def bf16_residuals(converted: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, int]:
    """A copy of ``converted`` with a BF16 cast between every dequantization and the additions it feeds."""
    graph_module = copy.deepcopy(converted)
    graph = graph_module.graph
    casts = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in DEQUANTIZE:
            continue
        adds = [user for user in node.users if user.target == torch.ops.aten.add.Tensor]
        if not adds:
            continue
        with graph.inserting_after(node):
            cast = graph.call_function(torch.ops.aten._to_copy.default, (node,), {"dtype": torch.bfloat16})
        for add in adds:
            add.replace_input_with(node, cast)
        casts += 1
    graph_module.recompile()
    return graph_module, casts


def _rel_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.float() - b.float()) ** 2).mean() / (b.float() ** 2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    unet = sd15_unet()
    inputs = random_inputs(unet, 500, seed=100)
    step_args = inputs.args()
    converted = int8_graph(unet, inputs)
    cast, casts = bf16_residuals(converted)
    print(f"{casts} dequantized residuals cast to BF16", flush=True)
    with torch.no_grad():
        reference = unet(*step_args[:2], encoder_hidden_states=step_args[2]).sample
    steps, errors = {}, {}
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="mixdiff-residuals-") as tmp:
        for name, graph in (("int8 (as shipped)", converted), ("int8, bf16 residuals", cast)):
            start = time.perf_counter()
            package, weights = Path(tmp) / f"{len(steps)}.pt2", Path(tmp) / f"{len(steps)}.safetensors"
            build_package(graph, inputs, package, weights)
            runner = load_package(package, weights)
            print(f"{name}: built in {time.perf_counter() - start:.0f} s", flush=True)
            errors[name] = _rel_mse(runner(*step_args), reference)
            steps[name] = lambda runner=runner: runner(*step_args)
        bf16 = EagerUNet(unet, "bf16", compile=True)
        bf16(*step_args)
        errors["bf16-compiled"] = _rel_mse(bf16(*step_args), reference)
        steps["bf16-compiled"] = lambda: bf16(*step_args)
        times = interleaved(steps, args.rounds)
    print("\n" + ratio_table(times, {"rel. MSE vs FP32": {name: f"{e:.2e}" for name, e in errors.items()}}))


if __name__ == "__main__":
    main()
