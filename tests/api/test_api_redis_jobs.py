"""Async jobs shared by replicas through a real Redis: two real ``mixdiff serve`` processes
on one ``redis-server``. A job is read, followed and cancelled through either replica; a
SIGTERMed replica hands its queued jobs to the other; a SIGKILLed one's running job fails
clearly and its queued jobs run elsewhere; Redis going away is a 503 on job routes only."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from api_helpers import debian_tool, free_port, running_server, wait_until

#: A short lease, so that a killed replica is noticed within seconds.
LEASE = 2


class RedisServer:
    """A redis-server on a loopback port, without persistence; stop and start again on the same port."""

    def __init__(self, log: Path):
        found = debian_tool("redis", "usr/bin/redis-server", "redis-server")
        if found is None:
            pytest.skip("no redis-server: make test-tools unpacks Debian's redis-server into .tools/")
        self.binary, self.env = found
        self.port, self.log, self.process = free_port(), log, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._answers, 20, "redis-server answering")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis.log")
    server.start()
    yield server
    server.stop()


def _serve_args(redis: RedisServer, core: int) -> list[str]:
    return [
        "--model", "tiny-random", "--precisions", "fp32,bf16", "--cores-per-worker", "1", "--first-core", str(core),
        "--job-store", redis.url, "--job-lease", str(LEASE), "--queue-size", "20", "--shutdown-grace", "60",
    ]  # fmt: skip


@pytest.fixture
def replicas(redis, tmp_path):
    """Two servers sharing ``redis``: [(process, base_url), ...]."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(running_server(tmp_path / f"server{core}.log", _serve_args(redis, core)))
            for core in (0, 1)
        ]


def _submit(base: str, **fields) -> dict:
    body = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 4, "precision": "bf16", **fields}
    r = httpx.post(base + "/v1/jobs", json=body, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()


def _job(base: str, job_id: str) -> dict:
    r = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _long_job_and_queue(a: str, b: str, queued: int) -> tuple[dict, list[dict]]:
    """A long job running on ``a`` (as ``b`` sees it) and ``queued`` short ones waiting behind it."""
    running = _submit(a, steps=100, width=256, height=256)
    waiting = [_submit(a, steps=4, seed=i) for i in range(queued)]
    wait_until(lambda: _job(b, running["id"])["status"] == "running", 60, "A's first job running")
    return running, waiting


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/health/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _events(base: str, job_id: str, last_event_id: str | None = None) -> list[tuple[str, str]]:
    """(id, event) of every event of the job's stream, to its end."""
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    out, event_id = [], None
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=headers, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                out.append((event_id, line[7:]))
    return out


@pytest.mark.slow
def test_a_job_is_read_followed_and_cancelled_through_the_other_replica(replicas):
    (_, a), (_, b) = replicas
    job = _submit(a, seed=3)
    events = _events(b, job["id"])  # followed on B while A runs it
    assert [event for _, event in events] == ["step"] * 4 + ["completed"]
    on_b, on_a = _job(b, job["id"]), _job(a, job["id"])
    assert on_b["status"] == "completed" and on_b["seed"] == 3 and len(on_b["images"]) == 1
    assert on_b == on_a
    # a follower that lost its connection resumes after the last event it saw
    assert _events(b, job["id"], last_event_id=events[1][0]) == events[2:]

    long = _submit(a, steps=100, width=256, height=256)
    wait_until(lambda: _job(b, long["id"])["status"] == "running", 60, "the long job running on A")
    cancelled = httpx.post(f"{b}/v1/jobs/{long['id']}/cancel", timeout=30).json()
    assert cancelled["status"] == "cancelled" and cancelled["error"]["type"] == "cancelled"
    assert cancelled["steps_done"] < 100
    assert _events(a, long["id"])[-1][1] == "failed"
    assert httpx.get(f"{b}/v1/jobs/{'0' * 32}").status_code == 404


@pytest.mark.slow
def test_a_sigtermed_replica_hands_its_queued_jobs_to_the_other(replicas):
    (process_a, a), (_, b) = replicas
    jobs = [_submit((a, b)[i % 2], steps=10, seed=i) for i in range(20)]
    process_a.send_signal(signal.SIGTERM)
    assert process_a.wait(90) == -signal.SIGTERM  # drained, then uvicorn ends with the signal it caught

    def all_completed() -> bool:
        return all(_job(b, job["id"])["status"] == "completed" for job in jobs)

    wait_until(all_completed, 120, "all 20 jobs completing", every=0.5)
    assert sorted(_job(b, job["id"])["seed"] for job in jobs) == list(range(20))


@pytest.mark.slow
def test_a_killed_replicas_running_job_fails_and_its_queued_jobs_run_elsewhere(replicas):
    (process_a, a), (_, b) = replicas
    running, queued = _long_job_and_queue(a, b, queued=3)
    process_a.kill()
    process_a.wait(10)

    def ended(job_id: str) -> dict | None:
        job = _job(b, job_id)
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    failed = wait_until(lambda: ended(running["id"]), 30, "the running job failing")
    assert failed["status"] == "failed" and failed["error"]["type"] == "worker_died"
    assert "stopped renewing its lease" in failed["error"]["message"]
    for job in queued:
        assert wait_until(lambda: ended(job["id"]), 60, "a queued job ending")["status"] == "completed"


@pytest.mark.slow
def test_without_redis_job_routes_answer_503_and_generate_still_works(redis, tmp_path):
    with running_server(tmp_path / "server.log", _serve_args(redis, 0)) as (_, base):
        redis.stop()
        r = httpx.post(base + "/v1/jobs", json={"prompt": "x", "steps": 2}, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable"
        assert httpx.get(f"{base}/v1/jobs/{'0' * 32}", timeout=60).status_code == 503
        assert httpx.post(base + "/generate", json={"prompt": "x", "steps": 2}, timeout=60).status_code == 200
        redis.start()
        job = wait_until(lambda: _try_submit(base), 30, "job admission after Redis returns")
        wait_until(lambda: _job(base, job["id"])["status"] == "completed", 60, "the job completing")


def _try_submit(base: str) -> dict | None:
    r = httpx.post(base + "/v1/jobs", json={"prompt": "x", "steps": 2}, timeout=60)
    return r.json() if r.status_code == 202 else None


@pytest.mark.slow
def test_a_replica_cut_off_past_its_lease_leaves_the_jobs_taken_over_alone(replicas):
    (process_a, a), (_, b) = replicas
    running, queued = _long_job_and_queue(a, b, queued=2)
    process_a.send_signal(signal.SIGSTOP)  # A stops answering and renewing; its worker goes on
    try:
        failed = wait_until(lambda: (j := _job(b, running["id"]))["status"] == "failed" and j, 30, "the reaping")
        for job in queued:
            wait_until(lambda: _job(b, job["id"])["status"] == "completed", 60, "a queued job completing on B")
        before = [_job(b, job["id"]) for job in (running, *queued)]
    finally:
        process_a.send_signal(signal.SIGCONT)
    wait_until(lambda: _ready(a), 30, "A answering again")
    time.sleep(2 * LEASE)  # A learns its lease ran out; whatever its worker finished is not written
    assert [_job(b, job["id"]) for job in (running, *queued)] == before
    assert "stopped renewing its lease" in failed["error"]["message"]
    assert _submit(a)["status"] in ("queued", "running")  # A works on
