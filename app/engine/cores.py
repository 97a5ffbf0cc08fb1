"""Which cores each worker process runs on.

Each worker gets its own contiguous slice of physical cores, so workers never
compete for a core and each keeps its caches. One logical CPU per physical core is
used: a hyper-thread sibling shares the AMX unit and brings no speed to a UNet step.
"""

from __future__ import annotations

import os
from pathlib import Path


def usable_physical_cores() -> list[int]:
    """The logical CPUs this process may run on, one per physical core, in order."""
    allowed = sorted(os.sched_getaffinity(0))
    seen: set[tuple[str, str]] = set()
    cores = []
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            key = ((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip())
        except OSError:  # no sysfs topology (some containers): every CPU counts as a core
            key = ("cpu", str(cpu))
        if key not in seen:
            seen.add(key)
            cores.append(cpu)
    return cores


def core_slices(
    workers: int, cores_per_worker: int | None, first_core: int, usable: list[int] | None = None
) -> list[list[int]]:
    """One list of CPU ids per worker, disjoint, taken in order from ``usable[first_core:]``.

    Raises ``ValueError`` saying what to change when the slices do not fit.
    """
    usable = usable_physical_cores() if usable is None else usable
    available = usable[first_core:]
    if cores_per_worker is None:
        cores_per_worker = len(available) // workers
    if cores_per_worker < 1 or workers * cores_per_worker > len(available):
        raise ValueError(
            f"{workers} worker(s) x {max(cores_per_worker, 1)} core(s) do not fit in the {len(available)} "
            f"physical core(s) usable from first_core={first_core} (usable CPUs: {usable}); "
            "lower workers or cores_per_worker, or first_core"
        )
    return [available[i * cores_per_worker : (i + 1) * cores_per_worker] for i in range(workers)]
