"""Bad input, access, limits: one error body everywhere, with a message that says what to change."""

from __future__ import annotations

import pytest


def body(**fields) -> dict:
    return {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, **fields}


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"width": 500}, "width", "width must be a multiple of 8, got 500"),
        ({"height": 4096}, "height", "between 64 and 1024"),
        ({"steps": 101}, "steps", "at most 100"),
        ({"n": 5}, "n", "at most 4"),
        ({"colour": "red"}, "colour", "unknown field 'colour'"),
        ({"precision": "int4"}, "precision", "available: bf16, fp32"),
        ({"precision": {"high": "fp32", "low": "int8", "first": 2, "last": 1}}, "precision", "'int8' is not"),
        ({"precision": {"high": "fp32", "lo": "bf16", "first": 1, "last": 1}}, "precision.lo", "unknown field"),
        ({"precision": ["fp32"]}, "steps", "sets the step count itself (1): leave out steps"),
        ({"steps": None, "precision": ["fp32"] * 101}, "precision", "lists 101 steps, more than max_steps=100"),
        ({"seed": False}, "seed", "valid integer, got False"),
        ({"steps": "10"}, "steps", "valid integer, got '10'"),
        ({"n": 2.5}, "n", "valid integer"),
        ({"n": True}, "n", "valid integer, got True"),
        ({"guidance_scale": "5"}, "guidance_scale", "valid number, got '5'"),
        ({"prompt": " \t\n"}, "prompt", "prompt must contain something other than white space"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000 characters"),
        ({"precision": 5}, "precision", "split schedule"),
        ({"scheduler": "heun"}, "scheduler", "available: ddim"),
        ({"prompt": ""}, "prompt", "prompt"),
        ({"guidance_scale": -1}, "guidance_scale", "greater than or equal to 0"),
    ],
)
def test_invalid_requests(client, fields, param, says):
    err = error(client.post("/generate", json=body(**fields)), 422)
    assert err["type"] == "invalid_request"
    assert err["param"] == param
    assert says in err["message"]


def test_missing_prompt(client):
    err = error(client.post("/generate", json={"steps": 2}), 422)
    assert err["message"] == "field 'prompt' is required"


def test_body_that_is_not_json(client):
    err = error(client.post("/generate", content=b"{not json", headers={"Content-Type": "application/json"}), 422)
    assert "not valid JSON" in err["message"]


def test_oversized_body(client, settings):
    err = error(client.post("/generate", json=body(prompt="x" * settings.max_body_bytes)), 413)
    assert err["type"] == "payload_too_large"


def test_oversized_streamed_body(client, settings):
    chunks = (b"x" * 4096 for _ in range(settings.max_body_bytes // 4096 + 2))  # no Content-Length
    err = error(client.post("/generate", content=chunks, headers={"Content-Type": "application/json"}), 413)
    assert err["type"] == "payload_too_large"


@pytest.mark.parametrize(("method", "path"), [("POST", "/generate"), ("GET", "/v1/models"), ("GET", "/v1/jobs/x")])
def test_api_key_is_required(client, method, path):
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        err = error(client.request(method, path, headers=headers), 401)
        assert err["type"] == "unauthorized"


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/metrics"])
def test_probes_need_no_key(client, path):
    assert client.get(path, headers={"Authorization": ""}).status_code == 200


def test_unknown_route_and_method(client):
    assert error(client.get("/nowhere"), 404)["type"] == "not_found"
    wrong = client.get("/generate")
    assert error(wrong, 405)["type"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"
    assert error(client.delete("/health/ready"), 405) and client.delete("/health/ready").headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "headers, content",
    [
        ({"Content-Type": "text/plain"}, b'{"prompt": "x"}'),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"prompt=x"),
        ({}, b'{"prompt": "x"}'),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/v1/jobs", "/v1/images/generations"])
def test_a_body_that_is_not_sent_as_json_is_refused_with_415(client, path, headers, content):
    err = error(client.post(path, content=content, headers=headers), 415)
    assert err["type"] == "unsupported_media_type"
    assert "Content-Type: application/json" in err["message"]
    assert "prompt" not in err["message"]  # the body is not echoed


def test_the_api_key_is_checked_before_the_body(client):
    err = error(client.post("/generate", content=b"{not json", headers={"Authorization": ""}), 401)
    assert err["type"] == "unauthorized"


@pytest.mark.parametrize("content", [b'{"prompt": "\xff"}', b"[" * 20000 + b"]" * 20000])
def test_bodies_json_cannot_parse_get_the_common_error(client, content):
    err = error(client.post("/generate", content=content, headers={"Content-Type": "application/json"}), 422)
    assert err["type"] == "invalid_request"
    assert "cannot be parsed" in err["message"] or "not valid JSON" in err["message"]


def test_failures_are_counted_by_reason(client):
    client.post("/generate", json=body(width=500))
    assert 'mixdiff_failures_total{reason="invalid_request"}' in client.get("/metrics").text
