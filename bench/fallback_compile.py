"""Quantize a model's UNet with given fallback sets, and compare each quantized graph run
eagerly and compiled to a package against the FP32 UNet:

    python bench/fallback_compile.py models/mixdiff-shapes "" conv_in "conv_in+down_blocks.0.resnets.0"

Each argument after the model is one fallback set, module names joined by ``+`` (``""``:
everything INT8). Calibration: 3 prompts x 4 uniform timesteps of 20-step FP32 runs;
the last 3 inputs are held out and scored. Prints the relative MSE against FP32 of the
eager graph (BF16 for the rest, as the package runs it) and of the compiled package;
they differ by rounding unless compiling got the graph wrong.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from app.pipeline.loader import load_diffusers_pipeline
from quantization import calibration
from quantization.graph import UNetGraph, export_unet
from quantization.inputs import run_in_batches
from quantization.methods.ptq import make_quantizer, quantize_graph
from quantization.package import compile_package, run_bf16


def _rel_mse(outputs, references) -> float:
    return sum(float(((o - r) ** 2).sum() / (r**2).sum()) for o, r in zip(outputs, references)) / len(outputs)


def main() -> None:
    model, *sets = sys.argv[1:]
    pipe = load_diffusers_pipeline(model)[0]
    captured = calibration.capture(
        pipe, ["a red circle", "a blue square", "a green star"], sampler="uniform", samples=4, steps=20
    )
    calib, held = captured[:-3], captured[-3:]
    graph = export_unet(pipe.unet.eval(), calib[0])
    with torch.no_grad():
        fp32 = [UNetGraph(pipe.unet)(*x.args()) for x in held]
    for spec in sets:
        fallback = [name for name in spec.split("+") if name]
        converted = quantize_graph(graph, make_quantizer(fallback), calib)
        eager = [run_bf16(converted, x) for x in held]
        with tempfile.TemporaryDirectory() as work:
            package = compile_package(converted, calib[0], str(Path(work) / "unet.pt2"))
            runner = torch._inductor.aoti_load_package(package)
            with torch.no_grad():
                compiled = [run_in_batches(runner, x.args()) for x in held]
        print(
            f"fallback {fallback or 'none'}: eager {_rel_mse(eager, fp32):.2e}, compiled {_rel_mse(compiled, fp32):.2e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
