"""The job store's retention and a job's event replay."""

from __future__ import annotations

import asyncio

import pytest

from app.engine.jobs import JobStatus, JobStore
from app.errors import Cancelled, NotFound
from app.pipeline.types import GenerationParams, GenerationResult, StepRecord

PARAMS = GenerationParams(prompt="x", steps=2)


def finished(store: JobStore, at: float):
    job = store.create("jobs", PARAMS, ["bf16", "bf16"], deadline=at + 60)
    job.complete(GenerationResult(images=[b"png"], seed=0, schedule=job.schedule))
    job.finished = at
    return job


def test_finished_jobs_expire_after_the_ttl():
    store = JobStore(ttl=10, max_kept=100)
    old, new = finished(store, 100.0), finished(store, 105.0)
    store.purge(now=112.0)
    assert list(store._jobs) == [new.id]
    assert old.id not in store._jobs


def test_unknown_job_is_not_found():
    with pytest.raises(NotFound):
        JobStore(ttl=10, max_kept=10).get("nope")


def test_oldest_finished_jobs_go_beyond_max_kept_and_active_ones_stay():
    store = JobStore(ttl=1e12, max_kept=2)
    active = store.create("jobs", PARAMS, ["bf16", "bf16"], deadline=1e12)
    jobs = [finished(store, float(t)) for t in (1, 2, 3)]
    store.purge(now=4.0)
    assert set(store._jobs) == {active.id, jobs[1].id, jobs[2].id}
    assert store.active() == [active]


def test_subscribers_get_past_events_then_live_ones_until_the_end():
    async def scenario():
        store = JobStore(ttl=60, max_kept=10)
        job = store.create("jobs", PARAMS, ["bf16", "fp32"], deadline=1e12)
        job.start(0)
        job.step(StepRecord(0, 999.0, "bf16", 0.1))
        seen = []

        async def follow():
            async for event, data in job.subscribe():
                seen.append((event, data.get("index")))

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0)
        job.step(StepRecord(1, 499.0, "fp32", 0.1))
        job.fail(Cancelled("stop"))
        await asyncio.wait_for(follower, 5)
        late = [event async for event, _ in job.subscribe()]
        return job, seen, late

    job, seen, late = asyncio.run(scenario())
    assert seen == [("step", 0), ("step", 1), ("failed", None)]
    assert late == ["step", "step", "failed"]
    assert job.status is JobStatus.cancelled


def test_the_completed_event_carries_the_total_time():
    job = JobStore(ttl=60, max_kept=10).create("jobs", PARAMS, ["bf16", "bf16"], deadline=1e12)
    job.start(0)
    job.complete(GenerationResult(images=[b"png"], seed=0, schedule=job.schedule))
    event, data = job.events[-1]
    assert event == "completed"
    assert data["timings"]["total"] == job.finished - job.created >= 0
