"""One INT8 3x3 convolution, its prepacked weights at a cache line or off one.

    python bench/weight_alignment.py [--channels 1280 --size 16]

The weights are prepacked as freezing prepacks them, then their bytes are copied to
addresses 0, 16 and 32 bytes past a 64-byte boundary and wrapped as oneDNN tensors
again (as ``quantization.runtime`` wraps an artifact's constants). The convolution
(u8 activations, residual added, FP32 out, as in a ResNet block of SD 1.5's UNet) runs
with each, interleaved, and must give the same output with each. AOTInductor's own
loader leaves every constant 16 bytes past a cache line (docs/notes/quantization-design.md,
"The artifact's files"; the measurements are in docs/notes/quantization-history.md,
"Intel Xeon with AMX").
"""

from __future__ import annotations

import argparse
import ctypes
import statistics

import torch

from bench.unet_step import interleaved
from quantization.runtime import ALIGNMENT, _Shim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=1280)
    parser.add_argument("--size", type=int, default=16, help="activation height and width")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    c, s = args.channels, args.size
    torch.manual_seed(0)
    w = torch.randint(-127, 128, (c, c, 3, 3), dtype=torch.int8)
    w_scale, w_zp = torch.rand(c) * 0.01 + 1e-3, torch.zeros(c, dtype=torch.int64)
    x = torch.randint(0, 256, (2, c, s, s), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, c, s, s).contiguous(memory_format=torch.channels_last)
    x_scale, x_zp = torch.tensor(0.02), torch.tensor(128, dtype=torch.int32)
    packed = torch.ops.onednn.qconv_prepack(w, w_scale, 0.02, 128, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
    nbytes = torch.ops.mkldnn._nbytes(packed)
    entry = {
        "name": "weight", "dtype": "int8", "sizes": list(packed.shape),
        "mkldnn_md": torch.ops.mkldnn._get_mkldnn_serialized_md(packed).numpy().tobytes().hex(),
    }  # fmt: skip
    shim, weights, buffers = _Shim(), {}, []
    for offset in (0, 16, 32):
        buffer = torch.empty(nbytes + 2 * ALIGNMENT, dtype=torch.uint8)
        address = buffer.data_ptr() + (-buffer.data_ptr()) % ALIGNMENT + offset
        ctypes.memmove(address, torch.ops.mkldnn.data_ptr(packed), nbytes)
        buffers.append(buffer)
        weights[f"{offset} bytes past a cache line"] = shim.mkldnn_tensor(address, entry)

    def conv(weight):
        return torch.ops.onednn.qconv2d_pointwise.binary_tensor(
            x, x_scale, x_zp, weight, w_scale, w_zp, residual.clone(), None, [1, 1], [1, 1], [1, 1], 1,
            1.0, 0, torch.float32, 1.0, 0, "sum", 1.0, "none", [None], "",
        )  # fmt: skip

    reference = conv(packed)
    if not all(torch.equal(conv(weight), reference) for weight in weights.values()):
        raise SystemExit("the copied weights compute something else")
    # the check above ran each once: no further warm-up
    times = interleaved({name: lambda w=weight: conv(w) for name, weight in weights.items()}, args.rounds, warmup=0)
    base = statistics.median(times["0 bytes past a cache line"])
    print(f"INT8 3x3 convolution, {c} channels at {s}x{s}, batch 2, median of {args.rounds} interleaved rounds\n")
    print("| weights | ms | vs aligned |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {1000 * statistics.median(t):.2f} | {statistics.median(t) / base:.2f}x |")


if __name__ == "__main__":
    main()
