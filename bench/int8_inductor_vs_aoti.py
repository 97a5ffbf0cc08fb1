"""The same INT8 UNet graph run two ways, beside BF16 compiled: ``torch.compile`` (Inductor,
freezing, inside BF16 autocast: torchao's documented int8-mixed-bf16 flow) and the
AOTInductor package the artifacts ship (``quantization.package.build_package``).

    python bench/int8_inductor_vs_aoti.py [--rounds 5]
    python bench/int8_inductor_vs_aoti.py --onednn-verbose int8-aotinductor > aoti.log
    python bench/onednn_summary.py aoti.log

``--onednn-verbose VARIANT``: after the timing, one more step of VARIANT with oneDNN's
verbose log on, after a ``MARK`` line (what ``bench/onednn_summary.py`` reads).

SD 1.5's UNet architecture with random weights, CFG batch 2, 64x64 latents; calibrated
as ``mixdiff bench`` calibrates. Builds take minutes; the steps are timed interleaved,
round after round, and reported as medians and ratios to BF16 compiled (results:
docs/notes/quantization-history.md, "Intel Xeon with AMX"). Run it as the server's workers run (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from app.pipeline.variants import EagerUNet
from bench.unet_step import int8_graph, interleaved, random_inputs, ratio_table, sd15_unet
from quantization.package import build_package
from quantization.runtime import load_package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--onednn-verbose", metavar="VARIANT", default=None, help="log one step of VARIANT")
    args = parser.parse_args()

    unet = sd15_unet()
    inputs = random_inputs(unet, 500, seed=100)
    step_args = inputs.args()
    converted = int8_graph(unet, inputs)
    steps = {}
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="mixdiff-aoti-") as tmp:
        torch._inductor.config.freezing = True
        compiled = torch.compile(converted)

        def inductor():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return compiled(*step_args)

        start = time.perf_counter()
        inductor()  # compiles
        print(f"int8 torch.compile built in {time.perf_counter() - start:.0f} s", flush=True)
        steps["int8-torch.compile"] = inductor

        work = Path(tmp)
        start = time.perf_counter()
        build_package(converted, inputs, work / "unet.pt2", work / "unet.safetensors")
        runner = load_package(work / "unet.pt2", work / "unet.safetensors")
        print(f"int8 AOTInductor package built in {time.perf_counter() - start:.0f} s", flush=True)
        steps["int8-aotinductor"] = lambda: runner(*step_args)

        bf16 = EagerUNet(unet, "bf16", compile=True)
        bf16(*step_args)
        steps["bf16-compiled"] = lambda: bf16(*step_args)

        times = interleaved(steps, args.rounds)
        if args.onednn_verbose:
            print("MARK", flush=True)
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                steps[args.onednn_verbose]()
    print("\n" + ratio_table(times))


if __name__ == "__main__":
    main()
