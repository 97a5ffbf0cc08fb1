"""The embedded default model served with the INT8 artifact shipped beside it: the
artifact verifies, ``int8`` is offered, and a BF16/INT8 mixed schedule runs with
both precisions' steps in the metrics."""

from __future__ import annotations

import json

import httpx
import pytest
from api_helpers import metric, running_server

from app.settings import DEFAULT_MODEL
from quantization.runtime import MANIFEST, sha256

pytestmark = pytest.mark.slow

SHIPPED = DEFAULT_MODEL / "quantized" / "int8"
MIXED = {"high": "bf16", "low": "int8", "first": 2, "last": 2}


def test_shipped_manifest_hashes_every_file():
    manifest = json.loads((SHIPPED / MANIFEST).read_text())
    files = {p.name for p in SHIPPED.iterdir()} - {MANIFEST}
    assert set(manifest["files"]) == files == {"unet-g0.pt2", "unet-g0.safetensors"}
    assert all(manifest["files"][name] == sha256(SHIPPED / name) for name in files)


def test_shipped_artifact_needs_avx512_not_amx():
    features = json.loads((SHIPPED / MANIFEST).read_text())["runtime"]["cpu_features"]
    assert {"avx512f", "avx512_vnni"} <= set(features) and not [f for f in features if f.startswith("amx")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--model", str(DEFAULT_MODEL), "--precisions", "bf16,int8", "--cores-per-worker", "1"]
    with running_server(tmp_path_factory.mktemp("shipped") / "server.log", args) as (_, base):
        yield base


def test_int8_is_offered(server):
    (model,) = httpx.get(server + "/v1/models").json()["data"]
    assert model["precisions"] == ["bf16", "int8"]
    # trained with zero terminal SNR: only schedulers that rescale their betas can sample it
    assert (model["prediction_type"], model["schedulers"]) == (
        "v_prediction", ["ddim", "euler", "euler_a", "dpmpp", "lcm", "tcd", "euler_a_trailing"]
    )  # fmt: skip
    assert model["vae_precision"] == model["text_encoder_precision"] == "bf16"  # the server's defaults
    split = {"high": "bf16", "low": "int8", "first": 5, "last": 5}
    own = {"steps": 30, "guidance_scale": 5.0, "precision": split, "scheduler": "ddim", "decoder": "full"}
    assert model["defaults"] == own  # the folder's mixdiff.json, mixdiff's own for the rest
    assert (model["default_precision"], model["default_scheduler"]) == (split, "ddim")
    assert model["decoders"] == ["full", "tiny", "tiny-int8"]  # its vae_tiny/ and vae_tiny/int8/


def test_the_model_serves_the_size_it_was_trained_for(server):
    (model,) = httpx.get(server + "/v1/models").json()["data"]
    assert model["sizes"] == [64]  # its mixdiff.json
    r = httpx.post(server + "/generate", json={"prompt": "a red circle", "steps": 2, "width": 256})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "width"
    assert "one of the sizes this model was trained for, 64 " in r.json()["error"]["message"]
    schema = httpx.get(server + "/openapi.json").json()["components"]["schemas"]["GenerateRequest"]
    assert schema["properties"]["width"]["anyOf"][0]["enum"] == [64]


def test_a_request_without_guidance_gets_the_models(server):
    body = {"prompt": "a red circle", "steps": 2, "seed": 1}
    r = httpx.post(server + "/generate", json=body, headers={"Accept": "application/json"}, timeout=120)
    assert r.status_code == 200, r.text
    assert (r.json()["guidance_scale"], r.json()["schedule"]) == (5.0, ["bf16", "bf16"])  # too short to split
    r = httpx.post(server + "/generate", json={**body, "guidance_scale": 7.5}, headers={"Accept": "application/json"},
                   timeout=120)
    assert r.json()["guidance_scale"] == 7.5


def test_a_scheduler_that_cannot_sample_the_model_is_refused(server):
    r = httpx.post(server + "/generate", json={"prompt": "a red circle", "steps": 2, "scheduler": "pndm"})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "scheduler"


def test_mixed_schedule_runs_both_precisions(server):
    before = {p: metric(server, f'mixdiff_denoise_step_seconds_count{{precision="{p}"}}') for p in ("bf16", "int8")}
    r = httpx.post(
        server + "/generate",
        json={"prompt": "a red circle on a white background", "steps": 10, "seed": 1, "precision": MIXED},
        headers={"Accept": "application/json"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.json()["schedule"] == ["bf16"] * 2 + ["int8"] * 6 + ["bf16"] * 2
    after = {p: metric(server, f'mixdiff_denoise_step_seconds_count{{precision="{p}"}}') for p in ("bf16", "int8")}
    assert after["bf16"] - before["bf16"] == 4
    assert after["int8"] - before["int8"] == 6
