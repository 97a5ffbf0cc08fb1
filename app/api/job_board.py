"""Where the job routes find async jobs: this process (``memory``), or Redis shared by replicas.

``LocalBoard`` reads the process's own ``JobStore``: jobs end with the process.

``RedisBoard`` keeps every async job of every replica in Redis, so any replica answers
for any job, and jobs outlive the replica that admitted them. Admission stays local:
each replica queues only what its own workers can take (429 stays immediate). The
replica that runs a job writes it through: its record (the job's JSON view), its
events (a stream, so a follower can resume from ``Last-Event-ID``), its images. A
cancel reaches the owner by pub/sub within a step. A draining replica hands its queued
jobs back to a shared queue that idle replicas take from; every replica renews a lease
(``job_lease``), and when one stops renewing it, another fails its running job with a
clear reason and hands its queued jobs on.

Keys, under ``mixdiff:``: ``job:{id}`` (the record, JSON), ``job:{id}:owner`` (the
replica that may write the job, watched in every write), ``job:{id}:request`` (what to
run, for a replica that takes it over), ``job:{id}:events`` (stream), ``job:{id}:images``
(PNGs), ``job:{id}:cancel`` (a cancel asked), ``queue`` (job ids handed back),
``replicas`` (set), ``replica:{id}`` (lease, with its queue length), ``replica:{id}:jobs``
(its jobs), ``reaping:{id}`` (who ends a gone replica's jobs); channel ``cancel``.
Finished jobs expire after ``job_ttl``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from app.api.views import job_view
from app.engine.jobs import TERMINAL_EVENTS, Job, JobStore
from app.engine.metrics import Metrics
from app.engine.pool import WorkerPool
from app.errors import Cancelled, MixdiffError, NotFound, StoreUnavailable, Timeout, WorkerDied
from app.pipeline.types import GenerationParams
from app.settings import Settings

log = logging.getLogger("mixdiff.jobs")

#: The owner of a job no replica holds (in the shared queue, or ended by another replica).
NOBODY = ""
#: An event as the stream sends it: (id, event, data).
Event = tuple[str, str, dict]
_FINISHED = ("completed", "failed", "cancelled")


def _not_found(job_id: str, ttl: float) -> NotFound:
    return NotFound(f"no job {job_id!r} (finished jobs are kept {ttl:g} s)", param="id")


class LocalBoard:
    """Jobs in this process's store; event ids are their positions in the job's sequence."""

    def __init__(self, jobs: JobStore, pool: WorkerPool):
        self.jobs, self.pool = jobs, pool

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def admitted(self, job: Job) -> None:
        pass

    def draining(self) -> None:
        pass

    def hand_back(self) -> None:
        pass

    async def view(self, job_id: str, *, images: bool = True) -> dict:
        return job_view(self.jobs.get(job_id), images=images)

    async def events(self, job_id: str, after: str | None) -> AsyncIterator[Event]:
        job = self.jobs.get(job_id)
        skip = int(after) + 1 if after is not None and after.isdigit() else 0

        async def stream():
            index = 0
            async for event, data in job.subscribe():
                if index >= skip:
                    yield str(index), event, data
                index += 1

        return stream()

    async def cancel(self, job_id: str) -> dict:
        job = self.jobs.get(job_id)
        self.pool.cancel(job)
        return job_view(job, images=False)


@dataclass
class _Write:
    """One change of a job, applied to Redis in one transaction, in the order it happened."""

    job_id: str
    record: dict  # its "replica" is the job's owner after the write (None: no replica)
    event: tuple[str, dict] | None = None
    request: dict | None = None  # on admission or take-over: what to run
    images: list[bytes] | None = None  # on completion
    hand_back: bool = False  # queued, for any replica to take
    done: asyncio.Future | None = None  # the admission waits for its write


#: Pop a handed-back job and make it this replica's in one step: KEYS queue, this
#: replica's job set; ARGV replica id, key prefix of jobs, seconds the claim lasts.
_TAKE = """
local id = redis.call('RPOP', KEYS[1])
if id then
  redis.call('SET', ARGV[2] .. id .. ':owner', ARGV[1], 'EX', ARGV[3])
  redis.call('SADD', KEYS[2], id)
end
return id
"""


class RedisBoard:
    def __init__(self, url: str, settings: Settings, jobs: JobStore, pool: WorkerPool, metrics: Metrics):
        self.url, self.settings, self.jobs, self.pool, self.metrics = url, settings, jobs, pool, metrics
        self.local = LocalBoard(jobs, pool)  # for the jobs of /generate, whose clients wait here
        self.redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self.replica = uuid.uuid4().hex[:12]
        self._writes: asyncio.Queue[_Write] = asyncio.Queue()
        self._failing = False  # the last write failed and is being retried
        self._dropped: dict[str, None] = {}  # the latest jobs whose admission failed: nothing more is written
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._take = self.redis.register_script(_TAKE)

    def _key(self, *parts: str) -> str:
        return ":".join(("mixdiff", *parts))

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the job store does not answer ({type(exc).__name__}: {exc}); retry later")

    def _ttl(self, finished: bool) -> int:
        return int(self.settings.job_ttl if finished else self.settings.job_ttl + self.settings.request_timeout)

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        loops = (self._write_loop, self._lease_loop, self._reap_loop, self._take_loop, self._cancel_loop)
        self._tasks = [asyncio.create_task(loop(), name=f"mixdiff-{loop.__name__}") for loop in loops]
        log.info("jobs are kept in %s as replica %s", self.url, self.replica)

    async def stop(self) -> None:
        """Write what is left (the drain's last results), then leave; if that cannot be
        written, the lease is left to run out, and another replica ends these jobs."""
        try:
            await asyncio.wait_for(self._writes.join(), timeout=10)
            written = True
        except TimeoutError:
            written = False
            log.warning("%d job change(s) could not be written to the job store", self._writes.qsize())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if written:
            try:
                await self.redis.srem(self._key("replicas"), self.replica)
                await self.redis.delete(self._key("replica", self.replica), self._key("replica", self.replica, "jobs"))
            except RedisError:
                pass
        await self.redis.aclose()

    # -- writing through ---------------------------------------------------------------------
    async def admitted(self, job: Job) -> None:
        """Record a job this replica admitted; ``StoreUnavailable`` if Redis cannot take it
        (at once while earlier writes wait for Redis), and the job is then dropped here too."""
        if self._failing:
            error = self._unavailable(ConnectionError("earlier changes are still waiting to be written"))
        else:
            done = asyncio.get_running_loop().create_future()
            self._watch(job, request=self._request(job), done=done)
            try:
                await done
                return
            except StoreUnavailable as exc:
                error = exc
        self._dropped[job.id] = None
        while len(self._dropped) > 1024:
            del self._dropped[next(iter(self._dropped))]
        job.watchers.clear()
        self.pool.cancel(job)
        self.jobs.forget(job)
        raise error

    def _request(self, job: Job) -> dict:
        params = asdict(job.params)
        return {"endpoint": job.endpoint, "params": params, "schedule": job.schedule, "created": job.created}

    def _watch(self, job: Job, *, request: dict, done: asyncio.Future | None = None) -> None:
        self._writes.put_nowait(_Write(job.id, self._record(job), request=request, done=done))
        job.watchers.append(self._changed)

    def _record(self, job: Job) -> dict:
        """The job as stored: its view, and this replica as its owner."""
        return {**job_view(job, images=False), "replica": self.replica}

    def _changed(self, job: Job, event: str | None, data: dict | None) -> None:
        images = job.result.images if event == "completed" and job.result else None
        self._writes.put_nowait(_Write(job.id, self._record(job), (event, data) if event else None, images=images))

    def draining(self) -> None:
        """SIGTERM: hand the jobs still queued here to the other replicas (soon: a signal
        handler may call this)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.hand_back)

    def hand_back(self) -> None:
        """Hand the jobs still queued here to the shared queue (on the event loop; again at
        shutdown, for any taken over since SIGTERM)."""
        for job in self.pool.release_queued():
            job.watchers.clear()
            self._writes.put_nowait(_Write(job.id, {**self._record(job), "replica": None}, hand_back=True))
            log.info("handed job %s back to the shared queue", job.id)

    async def _write_loop(self) -> None:
        while True:
            write = await self._writes.get()
            try:
                await self._write(write)
            except Exception:  # noqa: BLE001 - the loop must outlive any one write
                log.exception("job store: the change of job %s was not written", write.job_id)
            finally:
                self._failing = False
                self._writes.task_done()

    async def _write(self, write: _Write) -> None:
        """Apply a write, retrying while Redis is away; an admission is answered at once."""
        while write.job_id not in self._dropped:
            try:
                await self._apply(write)
                break
            except ResponseError as exc:  # Redis refused it (out of memory): retrying will not help
                log.error("job store refused the change of job %s: %s", write.job_id, exc)
                if write.done is not None and not write.done.done():
                    write.done.set_exception(self._unavailable(exc))
                return
            except RedisError as exc:
                if write.done is not None:
                    if not write.done.done():
                        write.done.set_exception(self._unavailable(exc))
                    return
                self._failing = True
                log.warning("job store: %s; retrying", exc)
                await asyncio.sleep(1)
        if write.done is not None and not write.done.done():
            write.done.set_result(None)

    async def _apply(self, write: _Write, *, owner: str | None = None) -> bool:
        """Write the change in one transaction while the job's owner is ``owner`` (this
        replica by default; ``NOBODY`` for a job in the shared queue): a replica whose job
        was taken over or ended by another writes nothing more of it. A job with no owner
        key (new, or a Redis that restarted) is written. False when it was not written."""
        owner = self.replica if owner is None else owner
        job = write.job_id
        keys = {part: self._key("job", job, part) for part in ("owner", "request", "events", "images", "cancel")}
        mine = self._key("replica", self.replica, "jobs")
        finished = write.record["status"] in _FINISHED
        ttl = self._ttl(finished)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(keys["owner"])
            current = await pipe.get(keys["owner"])
            if write.request is None and current is not None and current.decode() != owner:
                return False
            pipe.multi()
            pipe.set(self._key("job", job), json.dumps(write.record), ex=ttl)
            pipe.set(keys["owner"], write.record["replica"] or NOBODY, ex=ttl)
            if write.request is not None:
                pipe.set(keys["request"], json.dumps(write.request), ex=ttl)
            if write.event is not None:
                event, data = write.event
                pipe.xadd(keys["events"], {"event": event, "data": json.dumps(data)})
            pipe.expire(keys["events"], ttl)
            pipe.expire(keys["request"], ttl)
            if write.images is not None:
                pipe.delete(keys["images"])
                if write.images:
                    pipe.rpush(keys["images"], *write.images)
                pipe.expire(keys["images"], ttl)
            if write.record["replica"] == self.replica and not finished:
                pipe.sadd(mine, job)  # again on every write: a restarted Redis learns it anew
            else:
                pipe.srem(mine, job)
            if write.hand_back:
                pipe.lpush(self._key("queue"), job)
            pipe.exists(keys["cancel"])
            cancelled = (await pipe.execute())[-1]
        if cancelled and not finished and write.record["replica"] == self.replica:
            local = self.jobs.find(job)  # a cancel asked elsewhere while pub/sub was away
            if local is not None and not local.done:
                self.pool.cancel(local)
        return True

    # -- reading -----------------------------------------------------------------------------
    def _waited_for(self, job_id: str) -> Job | None:
        """A job whose client waits for it in its request (``/generate``): it lives here only."""
        job = self.jobs.find(job_id)
        return job if job is not None and not job.detached else None

    async def _get(self, job_id: str) -> dict:
        try:
            record = await self.redis.get(self._key("job", job_id))
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if record is None:
            raise _not_found(job_id, self.settings.job_ttl)
        return json.loads(record)

    async def view(self, job_id: str, *, images: bool = True) -> dict:
        if self._waited_for(job_id):
            return await self.local.view(job_id, images=images)
        record = await self._get(job_id)
        record.pop("replica", None)
        if images and record["status"] == "completed":
            try:
                pngs = await self.redis.lrange(self._key("job", job_id, "images"), 0, -1)
            except RedisError as exc:
                raise self._unavailable(exc) from None
            record["images"] = [base64.b64encode(png).decode() for png in pngs]
        return record

    async def events(self, job_id: str, after: str | None) -> AsyncIterator[Event]:
        if self._waited_for(job_id):
            return await self.local.events(job_id, after)
        await self._get(job_id)  # 404 before the stream starts
        key = self._key("job", job_id, "events")

        async def stream():
            last = after if after is not None and re.fullmatch(r"\d+-\d+", after) else "0-0"  # else from the start
            while True:
                try:
                    reply = await self.redis.xread({key: last}, count=100, block=2000)
                    if not reply and await self.redis.exists(self._key("job", job_id)) == 0:
                        return  # expired while nothing was written
                except RedisError as exc:
                    log.warning("job store: %s; the event stream of job %s ends here", exc, job_id)
                    return
                for _, entries in reply:
                    for entry_id, fields in entries:
                        last = entry_id.decode()
                        event = fields[b"event"].decode()
                        yield last, event, json.loads(fields[b"data"])
                        if event in TERMINAL_EVENTS:
                            return

        return stream()

    async def cancel(self, job_id: str) -> dict:
        """Cancel the job wherever it is: here, queued for any replica, or on another replica
        (told by pub/sub, and by a mark it reads with each step). Answers once it has ended,
        or after 5 s with the job as it then is."""
        if self._waited_for(job_id):
            return await self.local.cancel(job_id)
        record = await self._get(job_id)
        if record["status"] not in _FINISHED:
            local = self.jobs.find(job_id)
            try:
                await self.redis.set(self._key("job", job_id, "cancel"), 1, ex=self._ttl(False))
                if local is not None:
                    self.pool.cancel(local)
                elif await self.redis.lrem(self._key("queue"), 0, job_id):
                    await self._end_elsewhere(record, Cancelled("the job was cancelled"), owner=NOBODY)
                else:
                    await self.redis.publish(self._key("cancel"), job_id)
            except RedisError as exc:
                raise self._unavailable(exc) from None
            for _ in range(100):
                record = await self._get(job_id)
                if record["status"] in _FINISHED:
                    break
                await asyncio.sleep(0.05)
        record.pop("replica", None)
        return record

    async def _end_elsewhere(self, record: dict, error: MixdiffError, *, owner: str) -> None:
        """End a job no live replica runs: queued in the shared queue (``owner`` NOBODY), taken
        but not runnable, or left by a replica whose lease ran out (``owner`` that replica)."""
        record.update(
            status="cancelled" if isinstance(error, Cancelled) else "failed",
            finished=time.time(),
            error=error.body()["error"],
            replica=None,
        )
        event = ("failed", {"id": record["id"], **error.body()})
        await self._apply(_Write(record["id"], record, event), owner=owner)

    # -- replicas ----------------------------------------------------------------------------
    async def _cancel_loop(self) -> None:
        """Cancels asked of other replicas, for the jobs this one runs."""
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._key("cancel"))
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is None:
                            continue
                        job = self.jobs.find(message["data"].decode())
                        if job is not None and not job.done:
                            self.pool.cancel(job)
            except RedisError as exc:
                log.warning("job store: %s; cancels from other replicas wait for it", exc)
                await asyncio.sleep(1)

    async def _take_loop(self) -> None:
        """Take handed-back jobs while a worker here is idle and none waits."""
        while True:
            await asyncio.sleep(0.2)
            if not self.pool.can_take():
                continue
            job_id = None
            try:
                job_id = await self._take(
                    keys=[self._key("queue"), self._key("replica", self.replica, "jobs")],
                    args=[self.replica, self._key("job", ""), self._ttl(False)],
                )
                if job_id is not None:
                    await self._run_taken(job_id.decode())
            except RedisError as exc:
                log.warning("job store: %s; taking handed-back jobs waits for it", exc)
                await asyncio.sleep(1)
            except Exception:  # noqa: BLE001 - a job that cannot be read must not stop the loop
                log.exception("job %s taken from the shared queue could not be run", job_id)

    async def _run_taken(self, job_id: str) -> None:
        """Run a job just taken from the shared queue, or end it if it cannot run."""
        request, record, cancelled = await self.redis.mget(
            [self._key("job", job_id, "request"), self._key("job", job_id), self._key("job", job_id, "cancel")]
        )
        if request is None or record is None:  # expired meanwhile
            await self.redis.srem(self._key("replica", self.replica, "jobs"), job_id)
            return
        request, record = json.loads(request), json.loads(record)
        waited = time.time() - request["created"]
        if cancelled:
            return await self._end_elsewhere(record, Cancelled("the job was cancelled"), owner=self.replica)
        if waited > self.settings.request_timeout:
            limit = self.settings.request_timeout
            error = Timeout(f"the request did not finish within request_timeout={limit:g} s")
            return await self._end_elsewhere(record, error, owner=self.replica)
        if not self.pool.can_take():  # draining since it was taken: back to the queue
            record["replica"] = None
            await self._apply(_Write(job_id, record, hand_back=True))
            return
        job = self.pool.adopt(
            job_id,
            request["endpoint"],
            GenerationParams(**request["params"]),
            request["schedule"],
            created=request["created"],
            timeout=self.settings.request_timeout - waited,
        )
        self._watch(job, request=request)
        log.info("took over job %s", job_id)

    async def _lease_loop(self) -> None:
        """Renew this replica's lease. Where it had run out (Redis away, or restarted), the
        jobs another replica has taken over meanwhile are dropped here."""
        lease, key = self.settings.job_lease, self._key("replica", self.replica)
        held = False
        while True:
            try:
                mine = json.dumps({"queued": self.pool.queued})
                renewed = await self.redis.set(key, mine, px=int(lease * 1000), xx=True)
                if not renewed:
                    if held:
                        await self._lost_lease()
                    await self.redis.set(key, mine, px=int(lease * 1000))
                held = True
                await self.redis.sadd(self._key("replicas"), self.replica)
            except RedisError as exc:
                log.warning("job store: %s; lease not renewed", exc)
            await asyncio.sleep(lease / 4)

    async def _lost_lease(self) -> None:
        log.error("this replica's lease in the job store ran out; dropping the jobs others took over")
        for job in self.jobs.active():
            if not job.detached:
                continue
            owner = await self.redis.get(self._key("job", job.id, "owner"))
            if owner is not None and owner.decode() != self.replica:  # taken over, or ended by another
                job.watchers.clear()
                if not self.pool.release(job):
                    self.pool.cancel(job)
                self.jobs.forget(job)

    async def _reap_loop(self) -> None:
        """End the leases other replicas stopped renewing; count the jobs waiting across replicas."""
        while True:
            await asyncio.sleep(self.settings.job_lease / 2)
            try:
                waiting = await self.redis.llen(self._key("queue"))
                for replica in await self.redis.smembers(self._key("replicas")):
                    replica = replica.decode()
                    state = await self.redis.get(self._key("replica", replica))
                    if state is not None:
                        waiting += json.loads(state)["queued"]
                    elif replica != self.replica:
                        await self._reap(replica)
                self.metrics.shared_queue_depth.set(waiting)
            except RedisError as exc:
                log.warning("job store: %s; replicas not checked", exc)
            except Exception:  # noqa: BLE001 - the loop must outlive one bad record
                log.exception("job store: checking the replicas failed")

    async def _reap(self, replica: str) -> None:
        """The jobs of a replica whose lease ran out: running ones fail, queued ones go on.
        One replica reaps (a claim with a lease of its own); the replica leaves the set only
        once all its jobs are dealt with."""
        claim = self._key("reaping", replica)
        if not await self.redis.set(claim, self.replica, nx=True, px=int(self.settings.job_lease * 3000)):
            return
        jobs_key = self._key("replica", replica, "jobs")
        for job_id in await self.redis.smembers(jobs_key):
            job_id = job_id.decode()
            record = await self.redis.get(self._key("job", job_id))
            if record is not None:
                record = json.loads(record)
                if record["status"] == "running":
                    reason = (
                        f"replica {replica} stopped renewing its lease (job_lease={self.settings.job_lease:g} s) "
                        "while running this job: it died or lost the job store; retry the request"
                    )
                    await self._end_elsewhere(record, WorkerDied(reason), owner=replica)
                    log.warning("job %s failed: its replica %s is gone", job_id, replica)
                elif record["status"] == "queued":
                    record["replica"] = None
                    await self._apply(_Write(job_id, record, hand_back=True), owner=replica)
                    log.info("job %s of gone replica %s handed to the shared queue", job_id, replica)
            await self.redis.srem(jobs_key, job_id)
        await self.redis.srem(self._key("replicas"), replica)
        await self.redis.delete(claim)


def board(settings: Settings, jobs: JobStore, pool: WorkerPool, metrics: Metrics) -> LocalBoard | RedisBoard:
    """The job board the settings ask for."""
    if settings.job_store == "memory":
        return LocalBoard(jobs, pool)
    return RedisBoard(settings.job_store, settings, jobs, pool, metrics)
