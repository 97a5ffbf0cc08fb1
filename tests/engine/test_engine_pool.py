"""Admission before any worker has loaded, and after SIGTERM (no processes started)."""

from __future__ import annotations

import pytest

from app.engine.jobs import JobStore
from app.engine.metrics import Metrics
from app.engine.pool import LoadedModel, WorkerPool
from app.errors import NotReady
from app.pipeline.types import GenerationParams
from app.settings import Settings


@pytest.fixture
def pool() -> WorkerPool:
    settings = Settings(model="tiny-random", workers=1, cores_per_worker=1)
    return WorkerPool(settings, Metrics(), JobStore(settings.job_ttl, settings.max_jobs_kept))


def test_nothing_is_admitted_before_a_worker_loaded_the_model(pool):
    with pytest.raises(NotReady, match="still loading"):
        pool.submit("generate", GenerationParams(prompt="x", steps=1), ["bf16"])
    assert not pool.ready


def test_nothing_is_admitted_after_sigterm(pool):
    pool.model = LoadedModel({"name": "tiny-random"}, ["bf16"], ["ddim"])
    pool.stop_admitting()
    with pytest.raises(NotReady, match="shutting down"):
        pool.loaded_model()


def test_slices_that_do_not_fit_fail_at_start_up():
    settings = Settings(model="tiny-random", workers=64, cores_per_worker=64)
    with pytest.raises(ValueError, match="do not fit"):
        WorkerPool(settings, Metrics(), JobStore(settings.job_ttl, settings.max_jobs_kept))
