"""SD 1.5's INT8 and BF16 packages with their weights laid out for the other kind of CPU.

    python -m bench.weight_layout [--rounds 5]

A package's convolution weights are prepacked by oneDNN as it is built, for the kernels of
the build CPU: AMX ones on a Xeon with AMX, AVX-512 ones elsewhere (an AMD EPYC Zen 4, a
Xeon without AMX). On a CPU of the other kind oneDNN lays each weight out again at every
call. On a CPU with AMX this bench builds each package twice: as usual, and in a child
process with oneDNN held to AVX-512 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``), which lays
the weights out as a CPU without AMX does. All four are then timed here, interleaved, with
their error against FP32 and oneDNN's weight reorders in a step. Random SD 1.5 weights,
CFG batch 2, 64x64 latents, calibrated as ``mixdiff bench`` calibrates, with the server's
malloc tunables; about 15 minutes.

Then, on the CPU's own layout: why some INT8 convolutions still reorder their weights at
every call. torch's ``qconv_prepack`` (which Inductor's freezing calls) takes the input's
shape but not the output's data type; for a few of SD 1.5's convolution shapes it packs a
blocking that a convolution writing BF16, as the packages' do, does not take. Each shape is
prepacked and run writing BF16 and writing FP32, its reorders counted.
Results: docs/QUANTIZATION.md, "Where to quantize" and "Intel Xeon with AMX".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench import onednn_summary
from bench.unet_step import (
    bf16_graph,
    host_line,
    int8_graph,
    interleaved,
    random_inputs,
    rel_error,
    say,
    sd15_unet,
)
from common import malloc
from quantization.package import build_package
from quantization.runtime import load_package, weight_layout

PRECISIONS = ("bf16", "int8")
#: oneDNN held to the AVX-512 kernels a CPU without AMX runs
WITHOUT_AMX = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}


def build(precision: str, folder: Path) -> None:
    """``precision``'s package of the benchmark UNet into ``folder``, laid out for this process's oneDNN."""
    unet = sd15_unet()
    inputs = random_inputs(unet, 500, seed=100)
    with torch.no_grad():
        graph = int8_graph(unet, inputs) if precision == "int8" else bf16_graph(unet, inputs)
        build_package(graph, inputs, folder / f"{precision}.pt2", folder / f"{precision}.safetensors", inputs.batch)


def reorders(step) -> int:
    """oneDNN reorders in one call of ``step``: weights laid out again."""
    log = onednn_summary.record(step)
    return sum(1 for kind, *_ in onednn_summary.executions(log) if kind == "reorder")


#: (out channels, in channels, input size, stride) of SD 1.5 3x3 convolutions, batch 2
CONVOLUTIONS = ((320, 320, 64, 1), (320, 320, 64, 2), (640, 640, 32, 1), (1280, 1280, 16, 1), (640, 640, 64, 1))


def prepacked_reorders(out_channels: int, in_channels: int, size: int, stride: int, dtype: torch.dtype) -> int:
    """Weight reorders of one call of an INT8 3x3 convolution writing ``dtype``, its weight
    prepacked by ``qconv_prepack`` for its input's shape, as Inductor's freezing prepacks it."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-127, 127, (out_channels, in_channels, 3, 3), dtype=torch.int8, generator=generator)
    scales = torch.full((out_channels,), 0.01)
    x = torch.randint(0, 255, (2, in_channels, size, size), dtype=torch.uint8, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last)
    conv = [stride, stride], [1, 1], [1, 1], 1
    packed = torch.ops.onednn.qconv_prepack(weight, scales, 0.02, 128, *conv, list(x.shape))
    zero_points = torch.zeros(out_channels, dtype=torch.int64)
    bias = torch.zeros(out_channels)

    def call():
        return torch.ops.onednn.qconv_pointwise(
            x, 0.02, 128, packed, scales, zero_points, bias, *conv, 1.0, 0, dtype, "none", [], ""
        )

    call()
    return reorders(call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--build", nargs=2, metavar=("PRECISION", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    malloc.exec_with_tunables()  # as the server's workers run
    if args.build:
        build(args.build[0], Path(args.build[1]))
        return
    if weight_layout() != "amx":
        raise SystemExit("bench.weight_layout needs a CPU with AMX: it builds for both kinds of CPU there")

    import kernels

    kernels.load()
    with tempfile.TemporaryDirectory(prefix="mixdiff-layout-") as tmp:
        folders = {"amx": Path(tmp) / "amx", "avx512": Path(tmp) / "avx512"}
        for layout, folder in folders.items():
            folder.mkdir()
            env = {**os.environ, **(WITHOUT_AMX if layout == "avx512" else {})}
            for precision in PRECISIONS:  # each build in a process of its own: oneDNN reads its limit once
                say(f"building {precision} laid out for {layout} (minutes)", "weight layout")
                command = [sys.executable, "-m", "bench.weight_layout", "--build", precision, str(folder)]
                subprocess.run(command, env=env, check=True)
        unet = sd15_unet()
        step_args = random_inputs(unet, 500, seed=100).args()
        with torch.no_grad():
            reference = unet(*step_args[:2], encoder_hidden_states=step_args[2]).sample
        del unet
        steps, errors, counts = {}, {}, {}  # by (precision, layout)
        with torch.no_grad():
            for precision in PRECISIONS:
                for layout, folder in folders.items():
                    runner = load_package(folder / f"{precision}.pt2", folder / f"{precision}.safetensors")
                    key = precision, layout
                    steps[key] = lambda runner=runner: runner(*step_args)
                    errors[key] = rel_error(steps[key](), reference)
                    counts[key] = reorders(steps[key])
            say(f"timing {len(steps)} packages, {args.rounds} rounds", "weight layout")
            times = interleaved(steps, args.rounds, report=True)
    median = {key: statistics.median(t) for key, t in times.items()}
    print(f"\n{host_line()}, median of {args.rounds} interleaved rounds")
    print("\n| package | step (s) | vs laid out for amx | weight reorders a step | error vs fp32 |")
    print("|---|---|---|---|---|")
    for (precision, layout), seconds in median.items():
        native = median[precision, "amx"]
        key = precision, layout
        print(
            f"| {precision}, laid out for {layout} | {seconds:.3f} | {seconds / native:.2f}x | {counts[key]} "
            f"| {errors[key]:.1e} |"
        )
    print("\n| INT8 3x3 convolution (batch 2) | weight reorders a call, writing BF16 | writing FP32 |")
    print("|---|---|---|")
    for conv in CONVOLUTIONS:
        bf16, fp32 = (prepacked_reorders(*conv, dtype) for dtype in (torch.bfloat16, torch.float32))
        out_channels, in_channels, size, stride = conv
        shape = f"{in_channels} to {out_channels} channels at {size}x{size}"
        print(f"| {shape}{f', stride {stride}' if stride > 1 else ''} | {bf16} | {fp32} |")


if __name__ == "__main__":
    main()
