"""CPU kernels where PyTorch leaves speed on the table, as ``torch.ops.mixdiff`` ops.

The C++ sources under ``csrc/`` are compiled on first use (a minute) into Torch's
extension cache and loaded from there afterwards; ``load()`` does that once per process.
"""

from kernels.build import load

__all__ = ["load"]
