"""The worker pool: admission, dispatch, cancellation, timeouts, and dead workers.

It lives in the API process's event loop. Workers are ``spawn``ed processes, one per
core slice (``app.engine.cores``), each with its own duplex pipe: jobs go down it,
plain messages (``app.engine.messages``) come back. A reader thread waits on every
pipe and every process sentinel and hands what it sees to the event loop with
``call_soon_threadsafe``; everything else (job state, metrics) happens on the loop,
so none of it needs a lock. A pipe per worker also means a worker killed half-way
through a message can only garble its own pipe, which dies with it.

Admission is bounded: a job goes straight to an idle worker, or waits in the queue
if fewer than ``queue_size`` wait already, else ``Overloaded`` (429). A job's
deadline travels with it: the worker checks it, and the cancel flag, every step; the
pool also fails it at the deadline itself, so a client gets its 504 on time even if
a step hangs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized

from app.engine import worker as worker_main
from app.engine.cores import core_slices
from app.engine.jobs import Job, JobStore
from app.engine.messages import STOP, Done, Failed, Ready, RunJob, StartFailed, Step
from app.engine.metrics import Metrics
from app.errors import Cancelled, MixdiffError, NotReady, Overloaded, Timeout, WorkerDied, from_type
from app.pipeline.types import GenerationParams
from app.settings import Settings
from common import malloc

log = logging.getLogger("mixdiff.pool")

#: Seconds before a worker that died while loading is started again.
RESTART_DELAY = 1.0
#: Seconds a worker gets to exit after STOP before it is killed.
STOP_TIMEOUT = 10.0


@dataclass(eq=False)
class WorkerHandle:
    """One worker process as the API process sees it. A restart makes a new handle."""

    index: int
    cores: list[int]
    process: BaseProcess
    conn: Connection
    cancel: Synchronized  # number of the job the worker must abandon at its next step
    state: str = "starting"  # starting | idle | busy | exited
    job: Job | None = None
    pid: int | None = None


@dataclass(frozen=True)
class LoadedModel:
    """What the workers reported once loaded: what requests are validated against."""

    info: dict
    precisions: list[str]
    schedulers: list[str]


class WorkerPool:
    def __init__(self, settings: Settings, metrics: Metrics, jobs: JobStore):
        self.settings, self.metrics, self.jobs = settings, metrics, jobs
        self.slices = core_slices(settings.workers, settings.cores_per_worker, settings.first_core)
        self.workers: list[WorkerHandle] = []
        self.restarts = [0] * settings.workers
        self.model: LoadedModel | None = None
        self.fatal: str | None = None  # why no worker can ever load; set by StartFailed
        self.accepting = True
        self._draining_since = 0.0
        self._pending: deque[Job] = deque()
        self._timers: dict[Job, asyncio.TimerHandle] = {}  # each admitted job's request_timeout
        self._job_seconds = 0.0  # moving average of job durations, for Retry-After
        self._ctx = multiprocessing.get_context("spawn")
        malloc.for_children()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._watched: dict[object, WorkerHandle] = {}  # conn or sentinel -> handle (reader thread)
        self._lock = threading.Lock()
        self._wake_r = self._wake_w = -1  # a pipe that wakes the reader when the workers change
        self._reader = threading.Thread(target=self._read, name="mixdiff-pool-reader", daemon=True)
        metrics.workers.set(settings.workers)
        metrics.queue_capacity.set(settings.queue_size)

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn every worker; they load in the background and say when they are ready."""
        self._loop = asyncio.get_running_loop()
        self._wake_r, self._wake_w = os.pipe()
        self._reader.start()
        self.workers = [self._spawn(index) for index in range(self.settings.workers)]
        self._update_gauges()

    def stop_admitting(self) -> None:
        """New work gets ``NotReady`` from now on (SIGTERM); queued and running work goes on.

        Only sets plain attributes, so a signal handler may call it."""
        if self.accepting:
            self.accepting, self._draining_since = False, time.monotonic()

    async def drain(self, grace: float) -> None:
        """Stop admitting, let queued and running jobs finish within ``grace`` seconds of the
        SIGTERM (or of now), then stop the workers."""
        self.stop_admitting()
        remaining = max(0.0, grace - (time.monotonic() - self._draining_since))
        active = self.jobs.active()
        if active:
            log.info("waiting up to %.0f s for %d job(s) to finish", remaining, len(active))
            await asyncio.wait([asyncio.ensure_future(job.wait()) for job in active], timeout=remaining)
            log.info("%d of %d job(s) finished before the workers stop", sum(job.done for job in active), len(active))
        await self.stop()

    async def stop(self) -> None:
        """End whatever still runs or waits, stop the workers (kill those that do not stop)."""
        self._stopping, self.accepting = True, False
        for job in list(self._pending):
            self._finish(job, error=NotReady("the server shut down before the job ran"))
        for handle in self.workers:
            if handle.job is not None and not handle.job.done:
                self._finish(handle.job, error=NotReady("the server shut down while the job ran"))
            try:
                handle.conn.send(STOP)
            except OSError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for handle in self.workers:
            await asyncio.to_thread(handle.process.join, max(0.0, deadline - time.monotonic()))
            if handle.process.is_alive():
                log.warning("worker %d did not stop; killing it", handle.index)
                handle.process.kill()
                await asyncio.to_thread(handle.process.join, 5)
        with self._lock:
            self._watched.clear()
        os.write(self._wake_w, b"x")  # the reader sees no more workers and _stopping: it exits
        await asyncio.to_thread(self._reader.join, 5)
        os.close(self._wake_r)
        os.close(self._wake_w)

    @property
    def ready(self) -> bool:
        return self.accepting and self.fatal is None and any(w.state in ("idle", "busy") for w in self.workers)

    # -- admission -------------------------------------------------------------------------
    def loaded_model(self) -> LoadedModel:
        """The model the workers hold, or ``NotReady`` while none has loaded it."""
        if self.fatal:
            raise NotReady(self.fatal)
        if not self.accepting:
            raise NotReady("the server is shutting down")
        if self.model is None:
            raise NotReady("the workers are still loading the model; see /health/ready")
        return self.model

    def submit(self, endpoint: str, params: GenerationParams, schedule: list[str], *, detached: bool = False) -> Job:
        """Admit a validated request: to an idle worker, into the queue, or ``Overloaded``; ``detached``:
        the client polls for the outcome (a failure is then counted here, not by an error response)."""
        self.loaded_model()
        idle = any(w.state == "idle" for w in self.workers)
        if not idle and len(self._pending) >= self.settings.queue_size:
            raise Overloaded(
                f"all {len(self.workers)} worker(s) are busy and {len(self._pending)} request(s) wait "
                f"(queue_size={self.settings.queue_size}); retry later",
                retry_after=self._retry_after(),
            )
        job = self.jobs.create(
            endpoint, params, schedule, deadline=time.time() + self.settings.request_timeout, detached=detached
        )
        self.metrics.requests.labels(endpoint).inc()
        self._queue(job, self.settings.request_timeout)
        return job

    @property
    def queued(self) -> int:
        """Jobs waiting here for a worker."""
        return len(self._pending)

    def can_take(self) -> bool:
        """Whether a job from elsewhere would run at once: admitting, a worker idle, none waiting."""
        return self.ready and not self._pending and any(w.state == "idle" for w in self.workers)

    def adopt(
        self, job_id: str, endpoint: str, params: GenerationParams, schedule: list[str], created: float, timeout: float
    ) -> Job:
        """Queue a detached job another replica admitted (and counted), under its own id, with
        what is left of its request_timeout (``timeout`` seconds)."""
        job = self.jobs.create(
            endpoint,
            params,
            schedule,
            deadline=time.time() + timeout,
            detached=True,
            job_id=job_id,
            created=created,
        )
        self._queue(job, timeout)
        return job

    def release_queued(self) -> list[Job]:
        """Take the detached jobs still waiting out of this pool (a draining replica hands them on)."""
        return [job for job in list(self._pending) if job.detached and self.release(job)]

    def release(self, job: Job) -> bool:
        """Take a job that still waits out of the queue and the store, unfinished; False if it
        is not waiting here."""
        if job not in self._pending:
            return False
        self._pending.remove(job)
        self._timers.pop(job).cancel()
        self.jobs.forget(job)
        self._update_gauges()
        return True

    def _queue(self, job: Job, timeout: float) -> None:
        self._pending.append(job)
        self._timers[job] = self._loop.call_later(timeout, self._expire, job)
        self._dispatch()

    def cancel(self, job: Job) -> None:
        """End the job as cancelled; a running one frees its worker at the next step."""
        if not job.done:
            self._finish(job, error=Cancelled("the job was cancelled"))

    def _expire(self, job: Job) -> None:
        if not job.done:
            limit = self.settings.request_timeout
            self._finish(job, error=Timeout(f"the request did not finish within request_timeout={limit:g} s"))

    def _retry_after(self) -> int:
        waiting = len(self._pending) + 1
        return max(1, math.ceil(self._job_seconds * waiting / max(1, len(self.workers))))

    def _dispatch(self) -> None:
        while self._pending:
            handle = next((w for w in self.workers if w.state == "idle"), None)
            if handle is None:
                break
            job = self._pending.popleft()
            try:
                handle.conn.send(RunJob(job.number, job.params, job.schedule, job.deadline))
            except OSError:  # it just died; its sentinel will tell the reader
                handle.state = "exited"
                self._pending.appendleft(job)
                continue
            handle.state, handle.job = "busy", job
            job.start(handle.index)
            self.metrics.queue_wait_seconds.observe(job.started - job.created)
        self._update_gauges()

    def _finish(self, job: Job, *, result=None, error: MixdiffError | None = None) -> None:
        """The one place a job ends: state, events, the worker's cancel flag, metrics."""
        if job in self._pending:
            self._pending.remove(job)
        timer = self._timers.pop(job, None)
        if timer is not None:
            timer.cancel()
        if error is not None:
            handle = self._running(job)
            if handle is not None:
                handle.cancel.value = job.number
            job.fail(error)
            if job.detached:  # a waited-for job answers with the error: counted there
                self.metrics.failures.labels(error.type).inc()
        else:
            job.complete(result)
            seconds = job.finished - job.created
            self._job_seconds = 0.8 * self._job_seconds + 0.2 * seconds if self._job_seconds else seconds
        self.metrics.request_seconds.labels(job.endpoint).observe(job.finished - job.created)
        self._update_gauges()

    def _running(self, job: Job) -> WorkerHandle | None:
        return next((w for w in self.workers if w.job is job), None)

    # -- worker processes -------------------------------------------------------------------
    def _spawn(self, index: int) -> WorkerHandle:
        ours, theirs = self._ctx.Pipe(duplex=True)
        cancel = self._ctx.Value("q", 0, lock=False)
        process = self._ctx.Process(
            target=worker_main.main,
            args=(index, self.slices[index], self.settings, theirs, cancel),
            name=f"mixdiff-worker-{index}",
            daemon=True,
        )
        process.start()
        theirs.close()
        handle = WorkerHandle(index, self.slices[index], process, ours, cancel, pid=process.pid)
        with self._lock:
            self._watched[ours] = handle
            self._watched[process.sentinel] = handle
        os.write(self._wake_w, b"x")
        log.info("started worker %d (pid %d) on cores %s", index, process.pid, self.slices[index])
        return handle

    def _on_message(self, handle: WorkerHandle, message) -> None:
        m = self.metrics
        if isinstance(message, Step):
            m.step_seconds.labels(message.record.precision).observe(message.record.seconds)
            m.steps.labels(message.record.precision).inc()
            if handle.job is not None and handle.job.number == message.number and not handle.job.done:
                handle.job.step(message.record)
            return
        if isinstance(message, Ready):
            handle.state, handle.pid = "idle", message.pid
            m.worker_memory_bytes.labels(str(handle.index)).set(message.rss_bytes)
            if self.model is None:
                self.model = LoadedModel(message.info, message.precisions, message.schedulers)
                m.offer_precisions(message.precisions)
                m.model_info.info(
                    {
                        "name": str(message.info["name"]),
                        "family": str(message.info["family"]),
                        "default_size": str(message.info["default_size"]),
                        "precisions": ",".join(message.precisions),
                    }
                )
            log.info("worker %d (pid %d) ready", handle.index, message.pid)
        elif isinstance(message, StartFailed):
            self.fatal = message.message
            log.error("%s", message.message)
            if not any(w.state in ("idle", "busy") for w in self.workers):
                for job in list(self._pending):
                    self._finish(job, error=NotReady(message.message))
        elif isinstance(message, (Done, Failed)):
            m.worker_memory_bytes.labels(str(handle.index)).set(message.rss_bytes)
            job, handle.state, handle.job = handle.job, "idle", None
            handle.cancel.value = 0
            if isinstance(message, Done):
                m.text_encode_seconds.observe(message.result.text_encode_seconds)
                m.vae_decode_seconds.observe(message.result.vae_decode_seconds)
                m.images.inc(len(message.result.images))
            if job is not None and job.number == message.number and not job.done:
                if isinstance(message, Done):
                    self._finish(job, result=message.result)
                else:
                    self._finish(job, error=from_type(message.type, message.message, message.param))
        self._dispatch()

    def _on_exit(self, handle: WorkerHandle) -> None:
        handle.process.join(1)
        code = handle.process.exitcode
        was, handle.state = handle.state, "exited"
        job, handle.job = handle.job, None
        if job is not None and not job.done:
            self._finish(
                job,
                error=WorkerDied(
                    f"worker {handle.index} (pid {handle.pid}) exited with code {code} while running this job; "
                    "it is being restarted, retry the request"
                ),
            )
        self._update_gauges()
        if self._stopping or self.fatal or self.workers[handle.index] is not handle:
            return
        log.error("worker %d (pid %d) exited with code %s; restarting it", handle.index, handle.pid, code)
        self.restarts[handle.index] += 1
        self.metrics.worker_restarts.inc()
        delay = RESTART_DELAY if was == "starting" else 0.0  # a worker dying while loading would spin
        self._loop.call_later(delay, self._restart, handle.index)

    def _restart(self, index: int) -> None:
        if not self._stopping:
            self.workers[index] = self._spawn(index)
            self._update_gauges()

    def _update_gauges(self) -> None:
        m = self.metrics
        m.queue_depth.set(len(self._pending))
        m.workers_ready.set(sum(w.state in ("idle", "busy") for w in self.workers))
        m.workers_busy.set(sum(w.state == "busy" for w in self.workers))

    def describe(self) -> list[dict]:
        """The workers, for /health/ready: index, pid, state, cores, restarts."""
        return [
            {"index": w.index, "pid": w.pid, "state": w.state, "cores": w.cores, "restarts": self.restarts[w.index]}
            for w in self.workers
        ]

    # -- reader thread ----------------------------------------------------------------------
    def _read(self) -> None:
        """Wait on every worker's pipe and sentinel; hand messages and exits to the loop."""
        while True:
            with self._lock:
                watched = dict(self._watched)
            if self._stopping and not watched:
                return
            for ready in wait([self._wake_r, *watched]):
                if ready == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                handle = watched[ready]
                if ready is handle.conn:
                    self._receive(handle)
                else:  # the process exited: forward what it sent before, then the exit
                    while self._receive(handle):
                        pass
                    with self._lock:
                        self._watched.pop(handle.conn, None)
                        self._watched.pop(handle.process.sentinel, None)
                    self._loop.call_soon_threadsafe(self._on_exit, handle)

    def _receive(self, handle: WorkerHandle) -> bool:
        """Forward one message if one is waiting; False when none is or the pipe is closed."""
        try:
            if not handle.conn.poll():
                return False
            message = handle.conn.recv()
        except (EOFError, OSError):
            with self._lock:
                self._watched.pop(handle.conn, None)
            return False
        self._loop.call_soon_threadsafe(self._on_message, handle, message)
        return True
