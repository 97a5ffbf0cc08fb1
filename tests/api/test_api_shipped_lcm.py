"""The embedded model's 4-step student (``mixdiff distill lcm``), served as shipped: a request
that names nothing runs it as distilled (4 LCM steps, no guidance), its images read as their
prompts, and the tiny decoder and a BF16/INT8 schedule (its artifact, compiled for single
latents) work through the API."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from api_helpers import running_server
from PIL import Image

from app.settings import REPO_ROOT
from shapes import dataset, metrics, yardstick

pytestmark = pytest.mark.slow

STUDENT = REPO_ROOT / "models" / "mixdiff-shapes-lcm"
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--model", str(STUDENT), "--precisions", "bf16,int8", "--cores-per-worker", "1"]
    with running_server(tmp_path_factory.mktemp("lcm") / "server.log", args) as (_, base):
        yield base


def _generate(server: str, **fields) -> dict:
    r = httpx.post(server + "/generate", json=fields, headers=JSON, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _pixels(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"))


def test_the_student_runs_as_distilled_unless_asked_otherwise(server):
    (model,) = httpx.get(server + "/v1/models").json()["data"]
    own = {"steps": 4, "guidance_scale": 1.0, "scheduler": "lcm", "precision": "bf16", "decoder": "full"}
    assert model["defaults"] == own and model["default_scheduler"] == "lcm"
    assert model["decoders"] == ["full", "tiny", "tiny-int8"] and model["precisions"] == ["bf16", "int8"]
    assert model["artifacts"]["int8"]["model"]["compiled_batch"] == 1  # calibrated without guidance: one latent a call
    body = _generate(server, prompt="a red circle", seed=3)
    assert (body["scheduler"], body["guidance_scale"], body["schedule"]) == ("lcm", 1.0, ["bf16"] * 4)
    assert [round(step["timestep"]) for step in body["steps"]] == [999, 759, 499, 259]


def test_its_four_step_images_read_as_their_prompts_with_each_decoder_and_in_mixed_precision(server):
    prompts = dataset.prompts(6, seed=4242)
    mixed = {"high": "bf16", "low": "int8", "first": 1, "last": 1}
    images: dict[str, list[np.ndarray]] = {"bf16": [], "tiny": [], "tiny-int8": [], "mixed": []}
    for i, prompt in enumerate(prompts):
        images["bf16"].append(_pixels(_generate(server, prompt=prompt.text, seed=i)))
        for decoder in ("tiny", "tiny-int8"):
            images[decoder].append(_pixels(_generate(server, prompt=prompt.text, seed=i, decoder=decoder)))
        body = _generate(server, prompt=prompt.text, seed=i, precision=mixed)
        assert body["schedule"] == ["bf16", "int8", "int8", "bf16"]
        images["mixed"].append(_pixels(body))
    classifier = yardstick.load(REPO_ROOT / "models" / "shapes-yardstick")
    for label, batch in images.items():
        accuracy = metrics.prompt_accuracy([p.named for p in prompts], yardstick.read(classifier, np.stack(batch)))
        assert accuracy["shape"] >= 5 / 6 and accuracy["color"] >= 5 / 6, (label, accuracy)
    assert not np.array_equal(images["bf16"][0], images["tiny"][0])  # another decoder drew it
    assert not np.array_equal(images["tiny"][0], images["tiny-int8"][0])  # the same one, in INT8


def test_a_decoder_the_model_lacks_or_a_typo_is_refused(server):
    r = httpx.post(server + "/generate", json={"prompt": "a red circle", "decoder": "taesd"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "decoder"
