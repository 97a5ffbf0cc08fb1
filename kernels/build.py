"""Build ``csrc/`` once per source version, and load it.

The library goes to ``$MIXDIFF_KERNELS_DIR/<key>/`` (by default under
``~/.cache/mixdiff/kernels``), ``key`` a hash of the sources and headers, the build flags and the
torch version: an edit or an upgrade builds anew (Torch's extension builder, which needs
a C++ compiler and ninja; how long it takes: docs/KERNELS.md, "Building and loading"),
and an existing build is loaded as it is, with nothing written, so an image can carry it
prebuilt on a read-only file system (the Dockerfile does). The vector code is compiled for
AVX-512 BF16 with per-function target attributes and chosen at run time, so a library
built on any x86 CPU runs on any other (computing through ATen where that ISA is absent,
and for attention where the CPU has AMX). It links the OpenMP runtime by soname, so
``at::parallel_for`` shares the one torch has loaded.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

from kernels import ops

log = logging.getLogger(__name__)

NAME = "mixdiff_kernels"
#: The environment variable naming the folder of builds.
ENV = "MIXDIFF_KERNELS_DIR"
SOURCES = sorted((Path(__file__).parent / "csrc").glob("*.cpp"))
HEADERS = sorted((Path(__file__).parent / "csrc").glob("*.h"))
CFLAGS = ["-O3", "-fopenmp"]


def build_dir() -> Path:
    """Where this version of the sources is (or will be) built."""
    key = hashlib.sha256(torch.__version__.encode() + " ".join(CFLAGS).encode())
    for source in SOURCES + HEADERS:
        key.update(source.read_bytes())
    base = os.environ.get(ENV) or Path.home() / ".cache" / "mixdiff" / "kernels"
    return Path(base) / key.hexdigest()[:16]


@functools.cache
def load() -> None:
    """Load the kernels into this process, building them first if needed; registers ``torch.ops.mixdiff``."""
    start = time.perf_counter()
    folder = build_dir()
    library = folder / f"{NAME}.so"
    if library.is_file():
        torch.ops.load_library(str(library))
    else:
        # Built in a folder of this process's own, then moved in whole: a process starting
        # meanwhile finds no library (and builds too) or a complete one, never half of one.
        work = folder / f"build-{os.getpid()}"
        work.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name=NAME,
            sources=[str(s) for s in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(work),
            is_python_module=False,
        )
        os.replace(work / f"{NAME}.so", library)
        shutil.rmtree(work, ignore_errors=True)
    ops.register_rules()
    log.info(
        "mixdiff kernels %s in %.1f s (AVX-512 BF16: %s; attention: %s)",
        library.parent.name,
        time.perf_counter() - start,
        torch.ops.mixdiff.accelerated(),
        torch.ops.mixdiff.attention_backend(),
    )
