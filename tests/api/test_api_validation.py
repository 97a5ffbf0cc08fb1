"""``to_job``: what a request leaves out comes from the model, within the server's bounds."""

from app.api.schemas import GenerateRequest
from app.api.validation import to_job
from app.engine.pool import LoadedModel
from app.settings import Settings

MODEL = LoadedModel({"default_size": 64, "defaults": {"steps": 150, "guidance_scale": 5.0}}, ["bf16"], ["ddim"])


def test_steps_and_guidance_a_request_leaves_out_are_the_models():
    settings = Settings(model="tiny-random", max_steps=100)
    params, schedule = to_job(GenerateRequest(prompt="a red circle"), None, None, settings, MODEL)
    assert (params.steps, params.guidance_scale, len(schedule)) == (100, 5.0, 100)  # brought within max_steps
    params, schedule = to_job(GenerateRequest(prompt="a cat", steps=3, guidance_scale=1.0), None, None, settings, MODEL)
    assert (params.steps, params.guidance_scale, schedule) == (3, 1.0, ["bf16"] * 3)
