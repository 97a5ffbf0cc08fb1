"""Run one UNet variant of a model folder step after step, for a profiler to watch.

    python bench/profile_step.py runs/bench/sd15-random --precision int8 --steps 4

loads the variant as the server does (``bf16`` compiled with ``--compile``; with the
server's malloc tunables: it runs itself again with them where they are not set), runs a
warm-up step on SD 1.5-shaped random inputs (CFG batch 2, the UNet's own latent
size, 77 text tokens), prints ``MARK``, then times ``--steps`` steps. Everything a
profiler records after ``MARK`` is steady-state stepping:

    ONEDNN_VERBOSE=1 python bench/profile_step.py ... > verbose.log
    python bench/onednn_summary.py verbose.log
    perf record -g -p <pid> -- sleep 8     # once MARK is printed; then perf report --sort dso,sym
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import malloc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="diffusers pipeline folder (with quantized/<name>/ for int8)")
    parser.add_argument("--precision", default="int8", help="fp32, bf16 or an int8 artifact name")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fp32/bf16 UNet, as serve --compile")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    malloc.exec_with_tunables()  # before the heavy imports, which the process would make twice

    import torch

    from app.pipeline.loader import load_diffusers_pipeline
    from app.pipeline.variants import build_variants

    pipe, _, path = load_diffusers_pipeline(str(args.model))
    variants, unavailable = build_variants(pipe, [args.precision], compile=args.compile, model_dir=path)
    if args.precision in unavailable:
        raise SystemExit(unavailable[args.precision])
    unet = variants[args.precision]
    config = pipe.unet.config
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, config.in_channels, config.sample_size, config.sample_size, generator=g)
    text = torch.randn(2, 77, config.cross_attention_dim, generator=g)
    t = torch.tensor(500)
    unet(sample, t, text)
    print("MARK", flush=True)
    for _ in range(args.steps):
        start = time.perf_counter()
        unet(sample, t, text)
        print(f"step {time.perf_counter() - start:.3f} s", flush=True)


if __name__ == "__main__":
    main()
