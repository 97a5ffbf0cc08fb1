"""oneDNN's time per primitive kind, implementation and data types, from the
``ONEDNN_VERBOSE=1`` output of ``bench/profile_step.py`` after its ``MARK`` line:

    python bench/onednn_summary.py verbose.log [--shapes] [--mark "MARK AOTInductor package"]

``--shapes`` lists the costliest matmul and convolution problems instead, each with the rate it ran
at (multiply-accumulates a second: how far from the CPU's peak it is). ``--mark``
reads the executions between that line and the next ``MARK`` line.
(Verbose logging itself slows every call; read the times as shares, not as a step time.)
``record`` and ``by_kind`` do the same in a process, for ``mixdiff bench --onednn-profile``.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def executions(text: str, mark: str = "MARK"):
    """``(kind, implementation, memory descriptors, problem, milliseconds)`` of each execution after ``mark``."""
    _, _, steady = text.partition(f"{mark}\n")
    for line in steady.splitlines():
        if line.startswith("MARK"):
            break
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields:
            continue
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        i = fields.index("exec")
        yield fields[i + 2], fields[i + 3], fields[i + 5], fields[-2], ms


def _data_type(field: str, memory: str) -> str | None:
    """The data type of ``field`` (``src``, ``wei``, ``dst``) in an execution's memory descriptors."""
    found = re.findall(rf"{field}:(\w+)", memory)
    return found[0] if found else None


def record(call: Callable[[], object]) -> str:
    """oneDNN's verbose log of one ``call`` in this process, after a ``MARK`` line (as ``executions``
    reads it). oneDNN writes it to the process's standard output, which is taken for the call."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                call()
        finally:
            ctypes.CDLL(None).fflush(None)  # C's buffered standard output, before it goes back
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return "MARK\n" + log.read()


def by_kind(text: str) -> dict[str, dict]:
    """Calls and milliseconds per primitive kind and source data type (``convolution u8``,
    ``matmul bf16``, ...) of the executions after ``MARK``, the costliest first."""
    totals: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for kind, _, memory, _, ms in executions(text):
        src = _data_type("src", memory)
        total = totals[f"{kind} {src}" if src else kind]
        total[0] += 1
        total[1] += ms
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])
    return {key: {"calls": calls, "ms": round(ms, 1)} for key, (calls, ms) in ranked}


def multiply_accumulates(kind: str, problem: str) -> int:
    """The multiply-accumulates of one oneDNN ``convolution`` (``mb2_ic320oc320_ih64oh64kh3...``) or
    ``matmul`` (``[batch x]MxK:KxN``) problem."""
    if kind == "convolution":  # ic and oc count all groups' channels: each output reads ic / g of them
        size = {name: int(value) for name, value in re.findall(r"([a-z]+)(\d+)", problem)}
        outputs = math.prod(size.get(name, 1) for name in ("mb", "oc", "od", "oh", "ow", "kd", "kh", "kw"))
        return outputs * size["ic"] // size.get("g", 1)
    source, weights = problem.split(":")[:2]  # some oneDNN versions add the destination's shape
    return math.prod(int(n) for n in source.split("x")) * int(weights.split("x")[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("--shapes", action="store_true")
    parser.add_argument("--mark", default="MARK", help="the line the executions to read follow")
    args = parser.parse_args()
    totals: dict[tuple, list] = collections.defaultdict(lambda: [0, 0.0, 0])
    for kind, impl, memory, problem, ms in executions(args.log.read_text(), args.mark):
        if args.shapes:
            if kind not in ("matmul", "convolution"):
                continue
            key = (kind, problem, _data_type("dst", memory))
            totals[key][2] += multiply_accumulates(kind, problem)
        else:
            key = (kind, impl or "-", _data_type("src", memory) or "-", _data_type("wei", memory) or "-")
        totals[key][0] += 1
        totals[key][1] += ms
    grand = sum(ms for _, ms, _ in totals.values())
    for key, (calls, ms, macs) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:20]:
        rate = f" {macs / ms / 1e6:5.0f} GMAC/s" if args.shapes else ""
        print(f"{ms:9.1f} ms {100 * ms / grand:5.1f}% {calls:6d} calls{rate}  {' | '.join(key)}")
    if args.shapes:
        macs = sum(macs for *_, macs in totals.values())
        print(f"{grand:9.1f} ms in all, {macs / 1e9:.1f} GMAC, {macs / grand / 1e6:.0f} GMAC/s")
    else:
        print(f"{grand:9.1f} ms in all")


if __name__ == "__main__":
    main()
