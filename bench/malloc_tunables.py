"""UNet steps under the server's glibc malloc tunables against huge pages alone.

    python bench/malloc_tunables.py runs/bench/sd15-random [--pairs 2] [--steps 6]

glibc reads ``GLIBC_TUNABLES`` when a process starts, so the settings cannot be
interleaved in one process: each pair runs ``bench/profile_step.py`` once with
``glibc.malloc.hugetlb=1`` alone and once with the tunables ``common.malloc`` sets, one after
the other, for the INT8 artifact and for the compiled BF16 UNet (which compiles again in
every process). Prints the median step of each setting over all its processes, and the
ratio. The folder is ``mixdiff bench --service``'s SD 1.5 pipeline with random weights
and its ``int8`` artifact.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from common.malloc import with_tunables

SETTINGS = {
    "huge pages alone": "glibc.malloc.hugetlb=1",
    "server's tunables": with_tunables({})["GLIBC_TUNABLES"],
}
VARIANTS = {"int8": ["--precision", "int8"], "bf16-compiled": ["--precision", "bf16", "--compile"]}


def _steps(model: Path, variant: list[str], tunables: str, steps: int) -> list[float]:
    script = Path(__file__).with_name("profile_step.py")
    out = subprocess.run(
        [sys.executable, str(script), str(model), *variant, "--steps", str(steps)],
        env={**os.environ, "GLIBC_TUNABLES": tunables}, capture_output=True, text=True, check=True,
    ).stdout
    return [float(s) for s in re.findall(r"^step ([\d.]+) s$", out, re.MULTILINE)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.pairs):
        for variant, flags in VARIANTS.items():
            for setting, tunables in SETTINGS.items():
                times.setdefault((variant, setting), []).extend(_steps(args.model, flags, tunables, args.steps))
                print(variant, setting, "done", flush=True)
    print("\n| UNet | huge pages alone (s, median) | server's tunables (s, median) | ratio |\n|---|---|---|---|")
    for variant in VARIANTS:
        before, after = (statistics.median(times[(variant, s)]) for s in SETTINGS)
        print(f"| {variant} | {before:.3f} | {after:.3f} | {after / before:.2f}x |")


if __name__ == "__main__":
    main()
