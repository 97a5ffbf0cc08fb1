"""glibc malloc tunables for processes that run UNet steps.

A UNet step allocates activations of megabytes to tens of megabytes and frees them
again, step after step. glibc's defaults serve such blocks from fresh ``mmap``ed memory
and hand them back to the kernel when freed, so every step has the kernel zero and
fault in the same memory again, 4 KB page by 4 KB page. Three tunables change that:

- ``glibc.malloc.hugetlb=1`` (glibc 2.35 and later): what is mapped is advised to use
  transparent huge pages, 512 times fewer faults.
- ``glibc.malloc.mmap_threshold`` at its maximum, 32 MiB: blocks up to that size come
  from the heap instead of their own mappings (at 512x512 in SD 1.5 nearly all do).
- ``glibc.malloc.trim_threshold`` 1 GiB: up to that much freed memory at the top of the
  heap is kept for the next step rather than returned; what a larger burst (a VAE
  decode) frees beyond it still goes back.

On SD 1.5 at 512x512, huge pages alone made compiled BF16 and INT8 steps faster, and
keeping the memory all but removed the kernel's page clearing from an INT8 step
(docs/notes/quantization-history.md, "Huge pages" and "Keeping the memory";
``bench/malloc_tunables.py``). glibc reads ``GLIBC_TUNABLES`` once, when a process
starts, so they are set for processes yet to start: the server's workers, or the command
itself run again. A tunable ``GLIBC_TUNABLES`` already names is left as it is; other C
libraries (jemalloc in the image) ignore them all.

Memory freed in the middle of the heap is never returned by ``free`` alone, so a
process that allocates unevenly (a build, a worker between requests of different
sizes) would keep its high-water mark. ``release`` (glibc's ``malloc_trim``) hands
every free page back: the workers call it after each job, the benches after each
build. The pages kept for the steps of a job are then faulted in once per job, not
once per step.
"""

from __future__ import annotations

import ctypes
import os
import sys

TUNABLES = {
    "glibc.malloc.hugetlb": "1",
    "glibc.malloc.mmap_threshold": str(32 << 20),
    "glibc.malloc.trim_threshold": str(1 << 30),
}


def with_tunables(environ: dict[str, str]) -> dict[str, str] | None:
    """``environ`` with the tunables it does not name yet added, or ``None`` where it names them all."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    named = {item.split("=", 1)[0] for item in tunables.split(":")}
    missing = [f"{name}={value}" for name, value in TUNABLES.items() if name not in named]
    if not missing:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, *missing]))}


def exec_with_tunables() -> None:
    """Run this process's command again, in place (same pid), with the tunables, unless it has them:
    for scripts that time or profile steps the way the workers run them."""
    environ = with_tunables(dict(os.environ))
    if environ is not None:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def for_children() -> None:
    """Processes started from now on (the spawned workers) use the tunables."""
    environ = with_tunables(dict(os.environ))
    if environ is not None:
        os.environ["GLIBC_TUNABLES"] = environ["GLIBC_TUNABLES"]


def release() -> None:
    """Return the heap's free pages to the kernel (glibc's ``malloc_trim(0)``); nothing
    where the C library has no such function."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
