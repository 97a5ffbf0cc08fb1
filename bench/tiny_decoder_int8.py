"""The tiny decoder (TAESD's architecture, random weights) decoding one 512x512 image three ways:
as the server runs it (BF16 eager, channels-last), compiled by Inductor in BF16 (freezing), and
quantized to INT8 by PT2E (``X86InductorQuantizer``'s defaults, calibrated on 8 random latents)
then compiled under BF16 autocast, as INT8 UNets run. Interleaved rounds, medians; error is the
relative L2 against the FP32 decoder on a latent not calibrated on. It runs with the server's
malloc tunables (``common.malloc``).

    python -m bench.tiny_decoder_int8 [--rounds 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from common import malloc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    malloc.exec_with_tunables()  # before the heavy imports, which the process would make twice

    import torch
    import torch._inductor.config as inductor
    from diffusers import AutoencoderTiny
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    from bench.time_to_image import _Decode
    from bench.unet_step import interleaved, rel_error

    torch.manual_seed(0)
    vae = AutoencoderTiny().eval()
    latents = torch.randn(1, 4, 64, 64)
    inductor.freezing = True
    with torch.no_grad():
        reference = _Decode(vae)(latents)
        eager = copy.deepcopy(vae).to(torch.bfloat16, memory_format=torch.channels_last)
        bf16_latents = latents.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        compiled = torch.compile(_Decode(copy.deepcopy(eager)))
        start = time.perf_counter()
        compiled(bf16_latents)
        print(f"compiled BF16 in {time.perf_counter() - start:.1f} s", flush=True)

        start = time.perf_counter()
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(torch.export.export(_Decode(copy.deepcopy(vae)), (latents,)).module(), quantizer)
        for _ in range(8):
            prepared(torch.randn(1, 4, 64, 64))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            int8 = torch.compile(convert_pt2e(prepared))
            int8(latents)
        print(f"quantized and compiled INT8 in {time.perf_counter() - start:.1f} s", flush=True)

        def run_int8() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return int8(latents)

        calls = {
            "bf16 eager (served)": lambda: eager.decode(bf16_latents).sample,
            "bf16 compiled": lambda: compiled(bf16_latents),
            "int8 compiled": run_int8,
        }
        times = interleaved(calls, args.rounds)
        base = statistics.median(times["bf16 eager (served)"])
        print(f"decode of one 512x512 image, median of {args.rounds} interleaved rounds:")
        for name, call in calls.items():
            median = statistics.median(times[name])
            error = rel_error(call(), reference)
            print(f"  {name}: {median:.3f} s ({median / base:.2f}x), error vs FP32 {error:.1e}")


if __name__ == "__main__":
    main()
