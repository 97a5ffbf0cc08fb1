"""CPU kernels where PyTorch leaves speed on the table, as ``torch.ops.mixdiff`` ops.

The C++ sources under ``csrc/`` are compiled on first use (how long that takes:
docs/KERNELS.md, "Building and loading") into a cache keyed by their contents and
loaded from there afterwards; ``load()`` does that once per process
(``kernels/build.py``).
"""

from kernels.build import load

__all__ = ["load"]
