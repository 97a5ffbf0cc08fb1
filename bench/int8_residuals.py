"""The INT8 UNet's residual additions, torchao's way against another, beside BF16 compiled.

    python bench/int8_residuals.py [--compare unquantized|casts|products] [--rounds 5]

torchao's ``X86InductorQuantizer`` quantizes the residual that a convolution or linear
adds, so that Inductor can fuse the addition into the oneDNN kernel; the dequantized
residual is FP32, autocast leaves additions alone, and the sum, and the residual stream
after it, stay FP32 (``bench/int8_graph_dtypes.py --quantizer torchao``). Two INT8
graphs, ``torchao default`` (residuals quantized) and, by ``--compare``:

- ``unquantized`` (default): ``quantization.quantizer.UNetQuantizer``, what the
  artifacts use: the residual is not quantized and is added in BF16;
- ``casts``: torchao's graph with a BF16 cast between each dequantized residual and its
  addition, so the stream is BF16 as in the BF16 UNet;
- ``products``: here the artifacts' graph is the first one, against the same with the
  elementwise products left alone too: torchao annotates both inputs of a product of two
  tensors (the GEGLU's, in every transformer block) though no INT8 kernel multiplies them,
  so the graph rounds both to UINT8 and back before multiplying them in BF16.

Each is built as an AOTInductor package the way the artifacts are
(``quantization.package.build_package``), on SD 1.5's UNet architecture with random
weights (CFG batch 2, 64x64 latents, calibrated as ``mixdiff bench`` calibrates); steps
are timed interleaved with BF16 compiled. Also prints each graph's output error against
the FP32 UNet. Builds take minutes; a third build in the same process ran the
development machine out of memory (docs/notes/quantization-history.md, "Keeping the
memory"), hence one comparison per run. Run it as the server's workers run
(``GLIBC_TUNABLES`` as ``common.malloc`` sets it). Its results are in
docs/notes/quantization-history.md, "The residual stream in BF16"; ``products``' in
docs/QUANTIZATION.md, "Intel Xeon with AMX".
"""

from __future__ import annotations

import argparse
import copy
import gc
import tempfile
import time
from pathlib import Path

import torch
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config

from app.pipeline.variants import EagerUNet
from bench.unet_step import int8_graph, interleaved, random_inputs, ratio_table, sd15_unet
from common import malloc
from quantization.package import build_package
from quantization.quantizer import UNetQuantizer, torchao_default
from quantization.runtime import load_package

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


class ProductsUnquantized(UNetQuantizer):
    """The artifacts' quantizer, leaving the products of two tensors unquantized too."""

    def _annotate_mul_tensor(self, model, quantization_config, filter_fn=None) -> None:
        """Not annotated: the product runs in BF16 on its unrounded inputs."""


def _rel_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.float() - b.float()) ** 2).mean() / (b.float() ** 2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=("unquantized", "casts", "products"), default="unquantized")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    unet = sd15_unet()
    inputs = random_inputs(unet, 500, seed=100)
    step_args = inputs.args()

    def cast() -> torch.fx.GraphModule:
        graph, casts = bf16_residuals(int8_graph(unet, inputs, torchao_default()))
        print(f"{casts} dequantized residuals cast to BF16", flush=True)
        return graph

    # each graph is made just before its build and dropped after it
    graphs = {"int8, torchao default": lambda: int8_graph(unet, inputs, torchao_default())}
    if args.compare == "casts":
        graphs["int8, torchao default, bf16 casts"] = cast
    elif args.compare == "products":
        graphs = {
            "int8, residuals unquantized": lambda: int8_graph(unet, inputs),
            "int8, residuals and products unquantized": lambda: int8_graph(
                unet, inputs, ProductsUnquantized().set_global(get_default_x86_inductor_quantization_config())
            ),
        }
    else:
        graphs["int8, residuals unquantized"] = lambda: int8_graph(unet, inputs)
    with torch.no_grad():
        reference = unet(*step_args[:2], encoder_hidden_states=step_args[2]).sample
    steps, errors = {}, {}
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="mixdiff-residuals-") as tmp:
        for name, make_graph in graphs.items():
            start = time.perf_counter()
            graph = make_graph()
            package, weights = Path(tmp) / f"{len(steps)}.pt2", Path(tmp) / f"{len(steps)}.safetensors"
            build_package(graph, inputs, package, weights)
            del graph
            gc.collect()
            malloc.release()
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
