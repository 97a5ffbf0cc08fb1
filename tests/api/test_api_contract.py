"""The OpenAPI schema says what the server does: every status a route answers with, the
error body and its types, the limits of the settings and the model's own enums; and
schemathesis, driving a real server from that schema, finds nothing to report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from api_helpers import running_server

from app.errors import ERROR_TYPES


@pytest.fixture(scope="module")
def openapi(client) -> dict:
    return client.get("/openapi.json").json()


def _request_schema(openapi: dict, name: str = "GenerateRequest") -> dict:
    return openapi["components"]["schemas"][name]


def test_every_error_status_a_route_answers_with_is_documented_with_the_error_body(openapi):
    expected = {
        ("post", "/generate"): {401, 413, 415, 422, 429, 499, 500, 503, 504},
        ("post", "/v1/images/generations"): {400, 401, 413, 415, 422, 429, 499, 500, 503, 504},
        ("post", "/v1/jobs"): {401, 413, 415, 422, 429, 503},
        ("get", "/v1/jobs/{job_id}"): {401, 404, 503},
        ("post", "/v1/jobs/{job_id}/cancel"): {401, 404, 503},
        ("get", "/v1/jobs/{job_id}/events"): {401, 404, 422, 503},
        ("get", "/v1/models"): {401, 503},
        ("get", "/v1/models/{model_id}"): {401, 404, 503},
        ("get", "/health/ready"): {503},
        ("post", "/sdapi/v1/txt2img"): {401, 413, 415, 422, 429, 499, 500, 503, 504},
        ("get", "/sdapi/v1/progress"): {401},
        ("post", "/sdapi/v1/interrupt"): {401},
        ("get", "/sdapi/v1/samplers"): {401, 503},
    }
    for (method, path), statuses in expected.items():
        responses = openapi["paths"][path][method]["responses"]
        errors = {int(status) for status in responses if int(status) >= 400}
        assert errors == statuses, (method, path)
        for status in errors - {503} if path == "/health/ready" else errors:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


def test_the_error_types_are_one_enum(openapi):
    detail = openapi["components"]["schemas"]["ErrorDetail"]
    assert detail["properties"]["type"]["enum"] == list(ERROR_TYPES)
    assert "HTTPValidationError" not in openapi["components"]["schemas"]  # FastAPI's own 422 body is not ours


def test_the_settings_limits_are_in_the_schema(openapi, settings):
    props = _request_schema(openapi)["properties"]
    assert props["steps"]["anyOf"][0]["maximum"] == settings.max_steps
    assert props["n"]["maximum"] == settings.max_images
    assert props["width"]["anyOf"][0] == {
        "type": "integer", "minimum": settings.min_size, "maximum": settings.max_size, "multipleOf": 8
    }
    assert props["prompt"]["pattern"] == r"\S"
    openai = _request_schema(openapi, "ImageGenerationRequest")["properties"]
    assert openai["response_format"]["enum"] == ["b64_json"]
    assert openai["size"]["anyOf"][0]["pattern"].startswith("^(auto|(64|72|80|")


def test_the_models_precisions_schedulers_and_decoders_are_enums(openapi, client):
    (model,) = client.get("/v1/models").json()["data"]
    precision = _request_schema(openapi)["properties"]["precision"]["anyOf"][0]["anyOf"]
    assert precision[0]["enum"] == model["precisions"] == ["fp32", "bf16"]
    assert precision[2]["items"]["enum"] == model["precisions"]
    split = openapi["components"]["schemas"]["SplitSchedule"]
    assert split["properties"]["low"]["enum"] == model["precisions"]
    assert "low" in split["required"]  # its default, int8, is not offered here
    scheduler = _request_schema(openapi)["properties"]["scheduler"]["anyOf"][0]
    assert scheduler["enum"] == model["schedulers"]
    decoder = _request_schema(openapi)["properties"]["decoder"]["anyOf"][0]
    assert decoder["enum"] == model["decoders"] == ["full"]  # the tiny pipeline has no tiny decoder


def test_schemathesis_finds_no_failure(tmp_path):
    """Every check, a few examples per operation, against a real server on the tiny pipeline
    (``make contract`` runs longer: MIXDIFF_CONTRACT_EXAMPLES)."""
    examples = os.environ.get("MIXDIFF_CONTRACT_EXAMPLES", "5")
    # small limits keep each generation short, a queue of one answers 429 rather than keep clients
    # waiting, and a slow shared CI machine is allowed a minute where the default is ten seconds
    args = ["--model", "tiny-random", "--precisions", "fp32,bf16", "--cores-per-worker", "1", "--max-steps", "4",
            "--max-images", "2", "--max-size", "128", "--queue-size", "1", "--api-key", "k"]
    with running_server(tmp_path / "server.log", args) as (_, base):
        run = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run", f"{base}/openapi.json", "--checks", "all",
             "--max-examples", examples, "--header", "Authorization: Bearer k", "--seed", "1",
             "--request-timeout", "120", "--max-response-time", "60", "--suppress-health-check", "all", "--no-color"],
            capture_output=True, text=True, timeout=3600, cwd=tmp_path,  # its example database goes there
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
