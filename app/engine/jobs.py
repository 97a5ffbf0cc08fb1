"""Jobs: one generation request from admission to its end, and the store that keeps them.

A job lives in the API process's event loop. The pool moves it through
``queued -> running -> completed | failed | cancelled``; every change is also an
event (``step``, then ``completed`` or ``failed``) that server-sent-event clients
follow, and a late subscriber gets the whole sequence replayed. Finished jobs stay in
the store for ``job_ttl`` seconds (at most ``max_jobs_kept`` of them), then go.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from enum import Enum

from app.errors import Cancelled, MixdiffError, NotFound
from app.pipeline.types import GenerationParams, GenerationResult, StepRecord


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_EVENTS = ("completed", "failed")


@dataclass(eq=False)
class Job:
    id: str
    number: int  # small integer the worker compares with its cancel flag
    endpoint: str  # the API family that admitted it: the metrics label
    params: GenerationParams
    schedule: list[str]
    deadline: float  # time.time()
    detached: bool = False  # the client polls for the outcome instead of waiting for it in its request
    created: float = field(default_factory=time.time)
    status: JobStatus = JobStatus.queued
    worker: int | None = None
    started: float | None = None
    finished: float | None = None
    steps: list[StepRecord] = field(default_factory=list)
    result: GenerationResult | None = None
    error: MixdiffError | None = None
    events: list[tuple[str, dict]] = field(default_factory=list)
    #: Called with (job, event, data) on every change: event None when it starts running.
    watchers: list[Callable[[Job, str | None, dict | None], None]] = field(default_factory=list, repr=False)
    _subscribers: list[asyncio.Queue] = field(default_factory=list, repr=False)
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def done(self) -> bool:
        return self.finished is not None

    # -- transitions (called by the pool) ----------------------------------------------------
    def start(self, worker: int) -> None:
        self.status, self.worker, self.started = JobStatus.running, worker, time.time()
        for watcher in self.watchers:
            watcher(self, None, None)

    def step(self, record: StepRecord) -> None:
        self.steps.append(record)
        self._publish("step", asdict(record))

    def complete(self, result: GenerationResult) -> None:
        self.result, self.finished = result, time.time()  # the event's timings include the total
        self._finish(JobStatus.completed, "completed", {"id": self.id, "seed": result.seed, "timings": self.timings()})

    def fail(self, error: MixdiffError) -> None:
        self.error = error
        status = JobStatus.cancelled if isinstance(error, Cancelled) else JobStatus.failed
        self._finish(status, "failed", {"id": self.id, **error.body()})

    def _finish(self, status: JobStatus, event: str, data: dict) -> None:
        self.status, self.finished = status, self.finished or time.time()
        self._publish(event, data)
        self._done.set()

    def _publish(self, event: str, data: dict) -> None:
        self.events.append((event, data))
        for queue in self._subscribers:
            queue.put_nowait((event, data))
        for watcher in self.watchers:
            watcher(self, event, data)

    # -- observers ------------------------------------------------------------------------
    async def wait(self) -> None:
        await self._done.wait()

    async def subscribe(self) -> AsyncIterator[tuple[str, dict]]:
        """Every event of the job, past ones first, until ``completed`` or ``failed``."""
        queue: asyncio.Queue = asyncio.Queue()
        replay = list(self.events)
        self._subscribers.append(queue)
        try:
            for event in replay:
                yield event
            if replay and replay[-1][0] in TERMINAL_EVENTS:
                return
            while True:  # events published since we subscribed
                event = await queue.get()
                yield event
                if event[0] in TERMINAL_EVENTS:
                    return
        finally:
            self._subscribers.remove(queue)

    def timings(self) -> dict[str, float | None]:
        """Seconds per phase: queue wait, text encode, denoising steps, VAE decode, total."""
        result = self.result
        return {
            "queue_wait": None if self.started is None else self.started - self.created,
            "text_encode": result.text_encode_seconds if result else None,
            "steps": sum(step.seconds for step in self.steps),
            "vae_decode": result.vae_decode_seconds if result else None,
            "total": None if self.finished is None else self.finished - self.created,
        }


class JobStore:
    """Jobs by id; finished ones are dropped after ``ttl`` seconds or beyond ``max_kept``."""

    def __init__(self, ttl: float, max_kept: int):
        self.ttl, self.max_kept = ttl, max_kept
        self._jobs: dict[str, Job] = {}
        self._numbers = itertools.count(1)

    def create(
        self,
        endpoint: str,
        params: GenerationParams,
        schedule: list[str],
        deadline: float,
        *,
        detached: bool = False,
        job_id: str | None = None,
        created: float | None = None,
    ) -> Job:
        """A new job; ``job_id`` and ``created`` keep those of a job taken over from another replica."""
        self.purge()
        job = Job(job_id or uuid.uuid4().hex, next(self._numbers), endpoint, params, schedule, deadline, detached)
        if created is not None:
            job.created = created
        self._jobs[job.id] = job
        return job

    def find(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def forget(self, job: Job) -> None:
        """Drop a job this process no longer answers for (handed to another replica)."""
        self._jobs.pop(job.id, None)

    def get(self, job_id: str) -> Job:
        self.purge()
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no job {job_id!r} (finished jobs are kept {self.ttl:g} s)", param="id") from None

    def active(self) -> list[Job]:
        """Jobs queued or running."""
        return [job for job in self._jobs.values() if not job.done]

    def purge(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        finished = sorted((job for job in self._jobs.values() if job.done), key=lambda job: job.finished)
        expired = [job for job in finished if job.finished < now - self.ttl]
        excess = finished[len(expired) :][: max(0, len(finished) - len(expired) - self.max_kept)]
        for job in expired + excess:
            del self._jobs[job.id]

    def __len__(self) -> int:
        return len(self._jobs)
