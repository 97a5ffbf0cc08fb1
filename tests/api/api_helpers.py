"""Helpers shared by the route tests (a module of its own: every test area has a conftest)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

#: Seconds a worker may take to load the tiny pipeline on a busy CI machine.
READY_WITHIN = 300
#: Where ``make test-tools`` unpacks the Debian packages the tests drive.
TOOLS = Path(__file__).resolve().parents[2] / ".tools"


def debian_tool(folder: str, program: str, *installed: str) -> tuple[str, dict[str, str]] | None:
    """``program`` (a path inside the package) of the Debian package ``make test-tools`` unpacked
    into ``.tools/FOLDER``, with an environment whose library path holds the libraries unpacked
    beside it; else the first of ``installed`` on PATH; None if neither is there."""
    root = TOOLS / folder
    if (root / program).exists():
        directories = [
            str(directory)
            for lib in sorted((root / "usr" / "lib").glob("*-linux-gnu"))
            for directory in (lib, *sorted(path for path in lib.iterdir() if path.is_dir()))
        ]
        given = os.environ.get("LD_LIBRARY_PATH")
        library_path = os.pathsep.join([*directories, *filter(None, [given])])
        return str(root / program), {**os.environ, "LD_LIBRARY_PATH": library_path}
    found = next(filter(None, map(shutil.which, installed)), None)
    return (found, dict(os.environ)) if found else None


def wait_until(predicate, within: float, what: str, every: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"{what} did not happen within {within} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, path: str) -> httpx.Response | None:
    try:
        return httpx.get(base + path, timeout=10)
    except httpx.TransportError:
        return None


def metric(base: str, line: str) -> float:
    match = re.search(rf"^{re.escape(line)} (\S+)$", httpx.get(base + "/metrics").text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def ready_worker(base: str) -> dict | None:
    r = get(base, "/health/ready")
    return r.json()["workers"][0] if r is not None and r.status_code == 200 else None


@contextmanager
def running_server(log: Path, args: list[str]):
    """``(process, base_url)`` of ``mixdiff serve`` with one worker and ``args``, once its
    worker is ready; killed on exit if it still runs."""
    port = free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "1", *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or ready_worker(base), READY_WITHIN, "the server getting ready")
        assert process.poll() is None, log.read_text()
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
