"""AUTOMATIC1111's API, driven by the ``webuiapi`` client against a real server process:
txt2img, progress and interrupt, the model and sampler lists, and clear refusals."""

from __future__ import annotations

import json
import threading
from urllib.parse import urlparse

import httpx
import pytest
import webuiapi
from api_helpers import running_server, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--model", "tiny-random", "--precisions", "fp32,bf16", "--cores-per-worker", "1", "--api-key", "k"]
    with running_server(tmp_path_factory.mktemp("a1111") / "server.log", args) as (_, base):
        yield base


@pytest.fixture
def api(server) -> webuiapi.WebUIApi:
    url = urlparse(server)
    client = webuiapi.WebUIApi(host=url.hostname, port=url.port, sampler="Euler a", steps=3)
    client.session.headers["Authorization"] = "Bearer k"
    return client


def test_txt2img_answers_images_and_info(api):
    result = api.txt2img(prompt="a red circle", width=64, height=64, seed=5, cfg_scale=5, batch_size=2, n_iter=2)
    assert [image.size for image in result.images] == [(64, 64)] * 4
    info = result.info
    assert (info["seed"], info["all_seeds"]) == (5, [5, 5, 7, 7])  # n_iter runs batches at seed + batch_size
    assert (info["sampler_name"], info["steps"], info["cfg_scale"]) == ("Euler a", 3, 5.0)
    assert info["schedule"] == ["bf16"] * 3
    assert "Seed: 5, Size: 64x64" in info["infotexts"][0]
    assert result.parameters["prompt"] == "a red circle"


def test_a_random_seed_is_reported(api):
    seeds = {api.txt2img(prompt="x", width=64, height=64, seed=-1).info["seed"] for _ in range(2)}
    assert len(seeds) == 2 and all(seed >= 0 for seed in seeds)


def test_the_precision_schedule_is_an_extra_field(server):
    body = {"prompt": "a cat", "width": 64, "height": 64, "steps": 4, "seed": 1,
            "precision": {"high": "fp32", "low": "bf16", "first": 1, "last": 1}}
    r = httpx.post(server + "/sdapi/v1/txt2img", json=body, headers={"Authorization": "Bearer k"}, timeout=120)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["schedule"] == ["fp32", "bf16", "bf16", "fp32"]


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"sampler_name": "Heun"}, "unknown sampler 'Heun'; this model's samplers: DDIM, PLMS, Euler, Euler a"),
        ({"enable_hr": True}, "enable_hr: hires fix is not supported by mixdiff"),
        ({"restore_faces": True}, "restore_faces: face restoration is not supported by mixdiff"),
    ],
)
def test_what_mixdiff_does_not_do_is_refused_by_name(api, fields, says):
    with pytest.raises(RuntimeError) as err:
        api.txt2img(prompt="x", width=64, height=64, **fields)
    status, text = err.value.args
    assert status == 422 and says in json.loads(text)["error"]["message"]


def test_progress_follows_the_running_job_and_interrupt_cancels_it(api):
    outcome = {}

    def generate():
        try:
            api.txt2img(prompt="a long one", width=64, height=64, steps=100)
        except RuntimeError as exc:
            outcome["error"] = exc.args

    thread = threading.Thread(target=generate)
    thread.start()
    progress = wait_until(lambda: (p := api.get_progress())["progress"] > 0 and p, 120, "the job starting")
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert progress["state"]["sampling_steps"] == 100 and progress["state"]["sampling_step"] >= 1
    api.interrupt()
    thread.join(60)
    assert outcome["error"][0] == 499
    assert json.loads(outcome["error"][1])["error"]["type"] == "cancelled"
    assert api.get_progress()["progress"] == 0.0


def test_models_samplers_and_options(api):
    (model,) = api.get_sd_models()
    assert model["model_name"] == model["title"] == "tiny-random"
    names = ["DDIM", "PLMS", "Euler", "Euler a", "DPM++ 2M", "LMS", "LCM", "TCD"]
    assert [s["name"] for s in api.get_samplers()] == names
    assert api.get_options()["sd_model_checkpoint"] == "tiny-random"


def test_routes_mixdiff_does_not_serve_answer_404_with_what_it_does(server):
    r = httpx.post(server + "/sdapi/v1/img2img", json={"init_images": []}, headers={"Authorization": "Bearer k"})
    assert r.status_code == 404
    assert "/sdapi/v1/img2img is not served" in r.json()["error"]["message"]
    assert "/sdapi/v1/txt2img" in r.json()["error"]["message"]
