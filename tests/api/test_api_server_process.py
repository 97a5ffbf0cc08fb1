"""The real server process, driven over HTTP: OpenAI's own client, metrics, a client
that walks away, a worker killed mid-job and restarted, and SIGTERM."""

from __future__ import annotations

import base64
import io
import os
import signal

import httpx
import pytest
from api_helpers import READY_WITHIN, get, metric, ready_worker, running_server, wait_until
from openai import NotFoundError, OpenAI
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--model", "tiny-random", "--precisions", "fp32,bf16", "--cores-per-worker", "1", "--shutdown-grace", "5"]
    with running_server(tmp_path_factory.mktemp("server") / "server.log", args) as (process, base):
        yield process, base


def test_openai_client_gets_a_64px_image(server):
    _, base = server
    client = OpenAI(base_url=base + "/v1", api_key="not-needed")
    response = client.images.generate(
        prompt="a yellow triangle",
        size="64x64",
        response_format="b64_json",
        quality="standard",
        style="natural",
        extra_body={"precision": {"high": "fp32", "low": "bf16", "first": 1, "last": 1}, "steps": 3, "seed": 5},
    )
    (image,) = response.data
    assert Image.open(io.BytesIO(base64.b64decode(image.b64_json))).size == (64, 64)
    assert metric(base, 'mixdiff_denoise_step_seconds_count{precision="fp32"}') >= 2
    assert metric(base, 'mixdiff_denoise_step_seconds_count{precision="bf16"}') >= 1
    model = client.models.retrieve("tiny-random")
    assert (model.id, model.object, model.owned_by) == ("tiny-random", "model", "mixdiff")
    with pytest.raises(NotFoundError):
        client.models.retrieve("dall-e-3")


def test_a_client_that_goes_away_cancels_its_request(server):
    _, base = server
    body = {"prompt": "a cat", "steps": 100, "width": 64, "height": 64}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/generate", json=body, timeout=httpx.Timeout(10, read=2))
    wait_until(lambda: metric(base, 'mixdiff_failures_total{reason="cancelled"}') >= 1, 60, "the cancellation")
    wait_until(lambda: (w := ready_worker(base)) and w["state"] == "idle", 60, "the worker freeing")


def test_a_killed_worker_fails_its_job_and_comes_back(server):
    _, base = server
    pid = ready_worker(base)["pid"]
    job = httpx.post(base + "/v1/jobs", json={"prompt": "a dog", "steps": 100, "width": 64, "height": 64}).json()
    wait_until(lambda: httpx.get(f"{base}/v1/jobs/{job['id']}").json()["steps_done"] >= 1, 120, "the job starting")
    os.kill(pid, signal.SIGKILL)
    failed = wait_until(
        lambda: (j := httpx.get(f"{base}/v1/jobs/{job['id']}").json())["status"] == "failed" and j, 60, "the failure"
    )
    assert failed["error"]["type"] == "worker_died"
    assert str(pid) in failed["error"]["message"]
    assert metric(base, 'mixdiff_failures_total{reason="worker_died"}') == 1
    restarting = get(base, "/health/ready")  # the new worker needs seconds to load: not ready meanwhile
    assert restarting.status_code == 503
    assert restarting.json()["workers"][0]["state"] in ("exited", "starting")
    worker = wait_until(lambda: ready_worker(base), READY_WITHIN, "the worker coming back")
    assert worker["pid"] != pid and worker["restarts"] == 1
    assert metric(base, "mixdiff_worker_restarts_total") == 1
    r = httpx.post(base + "/generate", json={"prompt": "a dog", "steps": 2, "width": 64, "height": 64}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_sigterm_stops_the_server_and_its_workers(server):
    process, base = server
    pid = ready_worker(base)["pid"]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 30, "the worker exiting")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
