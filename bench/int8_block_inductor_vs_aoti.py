"""A stack of INT8 UNet-like blocks, built five ways and timed side by side: where
the AOTInductor package loses time against ``torch.compile`` on the same graph.

    python bench/int8_block_inductor_vs_aoti.py [--channels 1280 --size 16 --blocks 4]
    python bench/int8_block_inductor_vs_aoti.py --onednn-verbose > block.log

Each block is a ResNet half (GroupNorm, SiLU, 3x3 conv; GroupNorm, SiLU, 3x3 conv plus
the residual) and a feed-forward half (linear, GELU, linear plus the residual), like SD
1.5's at the given width and latent size, CFG batch 2, random weights, quantized as
``mixdiff quantize ptq`` quantizes (PT2E, ``X86InductorQuantizer``, BF16 elsewhere).
Variants: ``torch.compile`` with freezing (Python wrapper), the same with Inductor's C++
wrapper, the AOTInductor package built with the artifacts' settings
(``quantization.package.AOTI_CONFIG``) as AOTInductor loads it, one built with
AOTInductor's defaults (weights inside the ``.so``), and the package as the artifacts
load it (``quantization.runtime.load_package``: its constants handed to it 64-byte
aligned; AOTInductor's own loader leaves them 16 bytes past a cache line:
docs/notes/quantization-design.md, "The artifact's files"). The C++ wrapper variant
generates the same C++ as the package, but its frozen weights are the tensors Inductor
made in this process; the package's are the constants it loads. Results:
docs/notes/quantization-history.md, "Intel Xeon with AMX". ``--onednn-verbose`` logs one more run of each
variant, each after a ``MARK <variant>`` line. Run it as the server's workers run
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.unet_step import interleaved
from quantization.graph import drop_tensor_metadata_asserts
from quantization.methods.ptq import make_quantizer
from quantization.package import AOTI_CONFIG, constants_apart
from quantization.runtime import load_package


class Block(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.GroupNorm(32, channels), torch.nn.GroupNorm(32, channels)
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.ff1, self.ff2 = torch.nn.Linear(channels, 4 * channels), torch.nn.Linear(4 * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x)))))) + x
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        tokens = self.ff2(F.gelu(self.ff1(tokens))) + tokens
        return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


class Stack(torch.nn.Module):
    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.blocks = torch.nn.Sequential(*(Block(channels) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class _BF16(torch.nn.Module):
    def __init__(self, graph: torch.nn.Module):
        super().__init__()
        self.quantized = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.quantized(x)


def quantized_stack(channels: int, size: int, blocks: int) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(0)
    x = torch.randn(2, channels, size, size)
    graph = torch.export.export(Stack(channels, blocks).eval(), (x,)).module()
    prepared = prepare_pt2e(graph, make_quantizer())
    for seed in range(2):
        prepared(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))
    converted = convert_pt2e(prepared)
    drop_tensor_metadata_asserts(converted)
    return converted, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=1280)
    parser.add_argument("--size", type=int, default=16, help="latent height and width")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--onednn-verbose", action="store_true", help="log one more run of each variant")
    args = parser.parse_args()

    converted, x = quantized_stack(args.channels, args.size, args.blocks)
    bf16 = _BF16(converted)
    steps = {}
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="mixdiff-") as tmp:
        torch._inductor.config.freezing = True
        for name, cpp_wrapper in (("torch.compile", False), ("torch.compile cpp_wrapper", True)):
            torch._dynamo.reset()
            with torch._inductor.config.patch(cpp_wrapper=cpp_wrapper):
                compiled = torch.compile(bf16)
                compiled(x)
            steps[name] = lambda compiled=compiled: compiled(x)
        program = torch.export.export(bf16, (x,)).run_decompositions({})
        work = Path(tmp)
        for name, config in (("AOTInductor package", AOTI_CONFIG), ("AOTInductor, default settings", {"freezing": True})):
            package = torch._inductor.aoti_compile_and_package(
                program, package_path=str(work / f"block-{len(steps)}.pt2"), inductor_configs=config
            )
            runner = torch._inductor.aoti_load_package(package)
            steps[name] = lambda runner=runner: runner(x)
        package, weights = work / "block-aligned.pt2", work / "block-aligned.safetensors"
        with constants_apart(package, weights):
            torch._inductor.aoti_compile_and_package(program, package_path=str(package), inductor_configs=AOTI_CONFIG)
        aligned = load_package(package, weights)
        steps["AOTInductor package, constants aligned (artifacts)"] = lambda: aligned(x)

        times = interleaved(steps, args.rounds)
        if args.onednn_verbose:
            for name, step in steps.items():
                print(f"MARK {name}", flush=True)
                with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                    step()
    base = statistics.median(times["torch.compile"])
    print(f"\n{args.blocks} blocks, {args.channels} channels at {args.size}x{args.size}, batch 2\n")
    print(f"| variant | run (ms, median of {args.rounds}) | vs torch.compile |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {1000 * statistics.median(t):.1f} | {statistics.median(t) / base:.2f}x |")


if __name__ == "__main__":
    main()
