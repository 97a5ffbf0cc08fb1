"""Helpers shared by the route tests (a module of its own: every test area has a conftest)."""

from __future__ import annotations

import time

import pytest

#: Seconds a worker may take to load the tiny pipeline on a busy CI machine.
READY_WITHIN = 300


def wait_until(predicate, within: float, what: str, every: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"{what} did not happen within {within} s")
