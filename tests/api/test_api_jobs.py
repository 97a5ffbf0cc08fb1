"""Asynchronous jobs, events, cancellation, the bounded queue and the request timeout."""

from __future__ import annotations

import json

from api_helpers import wait_until

SLOW = 100  # steps: long enough to still be running when the test acts on it


def body(**fields) -> dict:
    return {"prompt": "a blue square", "steps": 3, "width": 64, "height": 64, "seed": 3, **fields}


def submit(client, **fields) -> dict:
    r = client.post("/v1/jobs", json=body(**fields))
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    return r.json()


def job(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def running(client, job_id: str) -> dict:
    return wait_until(lambda: (j := job(client, job_id))["steps_done"] >= 1 and j, 120, "the job's first step")


def events(client, job_id: str, last_event_id: str | None = None, *, ids: bool = False) -> list[tuple]:
    """(event, data) of each event, or (id, event, data) with ``ids``."""
    out, name, event_id = [], None, None
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id: "):
                event_id = line[len("id: ") :]
            elif line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
                out.append((event_id, name, data) if ids else (name, data))
    return out


def test_job_runs_to_completion(idle_worker):
    created = submit(idle_worker, precision={"high": "fp32", "low": "bf16", "first": 1, "last": 1})
    assert created["status"] in ("queued", "running")
    done = wait_until(lambda: (j := job(idle_worker, created["id"]))["status"] == "completed" and j, 120, "completion")
    assert done["schedule"] == ["fp32", "bf16", "fp32"]
    assert [s["precision"] for s in done["steps"]] == done["schedule"]
    assert len(done["images"]) == 1
    assert done["timings"]["total"] >= done["timings"]["steps"] > 0


def test_events_are_steps_then_completed_and_replayed(idle_worker):
    created = submit(idle_worker)
    live = events(idle_worker, created["id"])
    assert [name for name, _ in live] == ["step", "step", "step", "completed"]
    assert [data["index"] for _, data in live[:3]] == [0, 1, 2]
    assert all(data["precision"] == "bf16" and data["seconds"] > 0 for _, data in live[:3])
    assert live[-1][1]["id"] == created["id"]
    assert events(idle_worker, created["id"]) == live  # a late subscriber gets the replay


def test_a_follower_resumes_after_its_last_event_id(idle_worker):
    created = submit(idle_worker)
    every = events(idle_worker, created["id"], ids=True)
    assert [event_id for event_id, _, _ in every] == ["0", "1", "2", "3"]
    assert events(idle_worker, created["id"], last_event_id="1", ids=True) == every[2:]


def test_cancel_frees_the_worker_within_a_step(idle_worker):
    created = submit(idle_worker, steps=SLOW)
    running(idle_worker, created["id"])
    r = idle_worker.post(f"/v1/jobs/{created['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    wait_until(
        lambda: idle_worker.get("/health/ready").json()["workers"][0]["state"] == "idle", 60, "the worker freeing"
    )
    cancelled = job(idle_worker, created["id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["type"] == "cancelled"
    assert cancelled["steps_done"] < SLOW
    assert events(idle_worker, created["id"])[-1][0] == "failed"
    assert idle_worker.post("/generate", json=body(steps=1)).status_code == 200


def test_full_queue_gets_429_with_retry_after(idle_worker, settings):
    assert settings.queue_size == 1
    first = submit(idle_worker, steps=SLOW)
    running(idle_worker, first["id"])
    second = submit(idle_worker, steps=SLOW)
    assert second["status"] == "queued"
    r = idle_worker.post("/generate", json=body())
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "overloaded"
    assert int(r.headers["retry-after"]) >= 1
    for created in (second, first):
        assert idle_worker.post(f"/v1/jobs/{created['id']}/cancel").json()["status"] == "cancelled"


def test_timeout_gives_504(idle_worker, settings, monkeypatch):
    monkeypatch.setattr(settings, "request_timeout", 0.5)
    r = idle_worker.post("/generate", json=body(steps=SLOW))
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "timeout"


def test_unknown_job(client):
    r = client.get("/v1/jobs/nope")
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "id"
