"""GET /v1/models, the OpenAI images route in-process, health probes."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image


def test_models_lists_the_loaded_model(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    (model,) = r.json()["data"]
    assert r.json()["object"] == "list"
    assert model["id"] == "tiny-random"
    assert model["object"] == "model"
    assert model["family"] == "sd"
    assert model["precisions"] == ["fp32", "bf16"]
    assert model["parameters"]["unet"] > 0
    assert "ddim" in model["schedulers"]


def test_a_model_is_retrieved_by_its_id(client):
    model = client.get("/v1/models/tiny-random")
    assert model.status_code == 200
    assert model.json() == client.get("/v1/models").json()["data"][0]
    assert model.json()["sizes"] is None  # the tiny pipeline declares none: any multiple of 8
    missing = client.get("/v1/models/sd-turbo")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert "tiny-random" in missing.json()["error"]["message"]


def test_openai_quality_and_style_are_accepted(idle_worker):
    fields = {"prompt": "x", "steps": 1, "quality": "hd", "style": "natural", "user": "u1"}
    assert idle_worker.post("/v1/images/generations", json=fields).status_code == 200
    bad = idle_worker.post("/v1/images/generations", json={**fields, "style": "gothic"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "style"


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
def test_health_answers_head(client, path):
    r = client.head(path)
    assert r.status_code == 200 and r.content == b""


def test_health(client):
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready").json()
    assert ready["status"] == "ready"
    (worker,) = ready["workers"]
    assert os.sched_getaffinity(worker["pid"]) == set(worker["cores"])  # pinned to its slice
    environ = Path(f"/proc/{worker['pid']}/environ").read_bytes().split(b"\0")
    tunables = next(v for v in environ if v.startswith(b"GLIBC_TUNABLES="))
    assert b"glibc.malloc.hugetlb=" in tunables  # set by the pool, or by whoever started it


def test_openai_images_route(idle_worker):
    r = idle_worker.post(
        "/v1/images/generations",
        json={"prompt": "a green star", "size": "64x64", "n": 1, "response_format": "b64_json", "steps": 2, "seed": 1},
    )
    assert r.status_code == 200
    out = r.json()
    assert isinstance(out["created"], int)
    (image,) = out["data"]
    assert Image.open(io.BytesIO(base64.b64decode(image["b64_json"]))).size == (64, 64)
    assert re.search(r'^mixdiff_requests_total{endpoint="openai"} [1-9]', idle_worker.get("/metrics").text, re.M)


def test_openai_route_errors(client):
    url = client.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
    assert url.status_code == 400 and url.json()["error"]["param"] == "response_format"
    assert url.json()["error"]["type"] == "unsupported"
    size = client.post("/v1/images/generations", json={"prompt": "x", "size": "big"})
    assert size.status_code == 422 and "WIDTHxHEIGHT" in size.json()["error"]["message"]


def test_metrics_export_known_series_at_zero_before_any_request(settings):
    """Rates see the first request as an increase only if the series existed before it."""
    from prometheus_client import generate_latest

    from app.api.server import create_app

    metrics = create_app(settings).state.metrics
    metrics.offer_precisions(["bf16", "int8"])
    text = generate_latest(metrics.registry).decode()
    endpoints = re.findall(r'^mixdiff_requests_total{endpoint="(\w+)"} 0.0$', text, re.M)
    assert endpoints == ["generate", "jobs", "openai", "a1111"]  # the routes that admit generation requests
    assert 'mixdiff_request_duration_seconds_count{endpoint="openai"} 0.0' in text
    assert 'mixdiff_failures_total{reason="worker_died"} 0.0' in text
    assert 'mixdiff_denoise_steps_total{precision="int8"} 0.0' in text
    assert 'mixdiff_denoise_step_seconds_count{precision="bf16"} 0.0' in text
