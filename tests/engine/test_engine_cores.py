"""Core slices: disjoint, in order, and a clear error when they do not fit."""

from __future__ import annotations

import pytest

from app.engine.cores import core_slices, usable_physical_cores


def test_default_divides_the_usable_cores_evenly():
    assert core_slices(2, None, 0, usable=list(range(8))) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_explicit_size_and_first_core():
    assert core_slices(2, 2, 1, usable=[0, 2, 4, 6, 8, 10]) == [[2, 4], [6, 8]]


@pytest.mark.parametrize(("workers", "per_worker", "first"), [(4, 1, 0), (1, 4, 0), (1, 3, 1), (4, None, 0)])
def test_slices_that_do_not_fit_are_refused(workers, per_worker, first):
    with pytest.raises(ValueError, match="do not fit"):
        core_slices(workers, per_worker, first, usable=[0, 1, 2])


def test_usable_cores_are_allowed_cpus():
    import os

    cores = usable_physical_cores()
    assert cores and set(cores) <= os.sched_getaffinity(0)
