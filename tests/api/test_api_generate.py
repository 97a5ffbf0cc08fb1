"""POST /generate: PNG and JSON forms, seeds, schedules, warnings, metrics."""

from __future__ import annotations

import base64
import io
import re

from PIL import Image

TWO_PRECISIONS = {"high": "fp32", "low": "bf16", "first": 1, "last": 1}
JSON = {"Accept": "application/json"}


def body(**fields) -> dict:
    return {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 7, **fields}


def test_png_by_default(idle_worker):
    r = idle_worker.post("/generate", json=body(steps=2))
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    assert r.headers["x-mixdiff-seed"] == "7"


def test_same_seed_gives_the_same_png(idle_worker):
    first = idle_worker.post("/generate", json=body(precision=TWO_PRECISIONS))
    second = idle_worker.post("/generate", json=body(precision=TWO_PRECISIONS))
    other = idle_worker.post("/generate", json=body(precision=TWO_PRECISIONS, seed=8))
    assert first.status_code == second.status_code == other.status_code == 200
    assert first.content == second.content
    assert first.content != other.content


def test_json_lists_the_precision_of_every_step(idle_worker):
    r = idle_worker.post("/generate", json=body(precision=TWO_PRECISIONS, width=64, height=72), headers=JSON)
    assert r.status_code == 200
    out = r.json()
    assert out["schedule"] == ["fp32", "bf16", "bf16", "fp32"]
    assert [step["precision"] for step in out["steps"]] == out["schedule"]
    assert [step["index"] for step in out["steps"]] == [0, 1, 2, 3]
    assert all(step["seconds"] > 0 for step in out["steps"])
    assert set(out["timings"]) == {"queue_wait", "text_encode", "steps", "vae_decode", "total"}
    assert out["seed"] == 7
    (image,) = out["images"]
    assert Image.open(io.BytesIO(base64.b64decode(image))).size == (64, 72)


def test_seed_is_random_when_absent_and_returned(idle_worker):
    fields = body(steps=1)
    del fields["seed"]
    seeds = {idle_worker.post("/generate", json=fields, headers=JSON).json()["seed"] for _ in range(2)}
    assert len(seeds) == 2


def test_several_images_in_json(idle_worker):
    r = idle_worker.post("/generate", json=body(steps=1, n=2), headers=JSON)
    assert r.status_code == 200
    assert len(r.json()["images"]) == 2


def test_several_images_come_as_json_unless_png_alone_is_asked_for(idle_worker):
    r = idle_worker.post("/generate", json=body(steps=1, n=2), headers={"Accept": "*/*"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert len(r.json()["images"]) == 2
    r = idle_worker.post("/generate", json=body(steps=1, n=2), headers={"Accept": "image/png"})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "n"
    assert "accept application/json" in r.json()["error"]["message"]


def test_a_per_step_list_sets_the_step_count(idle_worker):
    fields = body(precision=["bf16", "fp32", "bf16"])
    del fields["steps"]
    r = idle_worker.post("/generate", json=fields, headers=JSON)
    assert r.status_code == 200, r.text
    assert [step["precision"] for step in r.json()["steps"]] == ["bf16", "fp32", "bf16"]


def test_long_prompt_is_truncated_with_a_warning(idle_worker):
    r = idle_worker.post("/generate", json=body(steps=1, prompt=" ".join(["red circle"] * 80)), headers=JSON)
    assert r.status_code == 200
    assert "prompt" in r.headers["x-mixdiff-warning"]
    assert r.json()["warnings"]


def test_metrics_have_step_samples_for_both_precisions(idle_worker):
    assert idle_worker.post("/generate", json=body(precision=TWO_PRECISIONS)).status_code == 200
    text = idle_worker.get("/metrics").text
    for precision in ("fp32", "bf16"):
        match = re.search(rf'^mixdiff_denoise_step_seconds_count{{precision="{precision}"}} (\S+)$', text, re.M)
        assert match and float(match[1]) >= 2
    assert re.search(r'^mixdiff_requests_total{endpoint="generate"} [1-9]', text, re.M)
    assert re.search(r"^mixdiff_images_total [1-9]", text, re.M)
    assert re.search(r"^mixdiff_workers_ready 1\.0$", text, re.M)
