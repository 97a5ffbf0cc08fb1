"""Container entry point: size the worker core slices and OpenMP to the CPUs the
container was given, then run the command (``mixdiff serve`` by default).

A container is given cores in one of two ways. A cpuset (``docker --cpuset-cpus``,
Kubernetes' static CPU manager) shows in the process' CPU affinity, which mixdiff
already divides between its workers. A CPU quota (``docker --cpus``, a Kubernetes
limit without the static CPU manager) does not: the process still sees every core of
the host, and workers sized to all of them would be throttled. So when the quota is
smaller than the usable cores, ``MIXDIFF_CORES_PER_WORKER`` is set from the quota.
``OMP_NUM_THREADS`` is set to the cores of one worker, for the API process and any
tool run in the container; workers set their own from their slice. Values set
explicitly in the environment are kept.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from app.engine.cores import usable_physical_cores

CGROUP = Path("/sys/fs/cgroup")


def cpu_quota() -> float | None:
    """Cores' worth of CPU time the container's cgroup allows, or None when unlimited."""
    v2 = CGROUP / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().partition(" ")
        return None if quota == "max" else int(quota) / int(period)
    v1_quota, v1_period = CGROUP / "cpu" / "cpu.cfs_quota_us", CGROUP / "cpu" / "cpu.cfs_period_us"
    if v1_quota.is_file() and v1_period.is_file():
        quota = int(v1_quota.read_text())
        return None if quota < 0 else quota / int(v1_period.read_text())
    return None


def core_environment(environ: dict[str, str]) -> dict[str, str]:
    """The variables to add to ``environ`` (never overriding one already set)."""
    cores = len(usable_physical_cores())
    quota = cpu_quota()
    limited_by_quota = quota is not None and math.floor(quota) < cores
    if limited_by_quota:
        cores = max(1, math.floor(quota))
    workers = int(environ.get("MIXDIFF_WORKERS", "1"))
    per_worker = int(environ.get("MIXDIFF_CORES_PER_WORKER") or max(1, cores // workers))
    added = {"OMP_NUM_THREADS": str(per_worker)}
    if limited_by_quota:
        added["MIXDIFF_CORES_PER_WORKER"] = str(per_worker)
    return {name: value for name, value in added.items() if name not in environ}


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: entrypoint.py COMMAND [ARG...]")
    try:
        os.environ.update(core_environment(dict(os.environ)))
    except ValueError as error:  # MIXDIFF_WORKERS or MIXDIFF_CORES_PER_WORKER not a whole number
        sys.exit(f"entrypoint: MIXDIFF_WORKERS and MIXDIFF_CORES_PER_WORKER must be whole numbers ({error})")
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
