"""``to_job``: what a request leaves out comes from the model, within the server's bounds."""

import pytest

from app.api.schemas import GenerateRequest
from app.api.submit import JobRequest, to_job
from app.engine.pool import LoadedModel
from app.errors import InvalidRequest
from app.settings import Settings

DEFAULTS = {"steps": 150, "guidance_scale": 5.0, "precision": "bf16", "scheduler": "ddim", "decoder": "full"}
MODEL = LoadedModel({"default_size": 64, "defaults": DEFAULTS, "decoders": ["full"]}, ["bf16"], ["ddim"])


def job(**fields) -> JobRequest:
    body = GenerateRequest(**fields)
    return JobRequest.of(body, body.width, body.height)


def test_steps_and_guidance_a_request_leaves_out_are_the_models():
    settings = Settings(model="tiny-random", max_steps=100)
    params, schedule = to_job(job(prompt="a red circle"), settings, MODEL)
    assert (params.steps, params.guidance_scale, len(schedule)) == (100, 5.0, 100)  # brought within max_steps
    params, schedule = to_job(job(prompt="a cat", steps=3, guidance_scale=1.0), settings, MODEL)
    assert (params.steps, params.guidance_scale, schedule) == (3, 1.0, ["bf16"] * 3)


def test_an_unavailable_precision_says_why_the_model_lacks_it():
    info = {**MODEL.info, "unavailable": {"int8": "no artifact: run mixdiff quantize ptq", "fp16": "unknown"}}
    model = LoadedModel(info, MODEL.precisions, MODEL.schedulers)
    with pytest.raises(InvalidRequest) as err:
        to_job(job(prompt="a cat", steps=2, precision="int8"), Settings(model="tiny-random"), model)
    assert err.value.param == "precision"
    assert err.value.message == (
        "precision 'int8' is not available for this model; available: bf16 "
        "(int8: no artifact: run mixdiff quantize ptq)"
    )


def test_a_request_without_precision_runs_the_models_default_schedule_where_it_is_offered():
    split = {"high": "bf16", "low": "int8-qat", "first": 1, "last": 1}
    info = {**MODEL.info, "defaults": {**MODEL.info["defaults"], "precision": split}}
    settings = Settings(model="tiny-random")
    offered = LoadedModel(info, ["bf16", "int8-qat"], ["ddim"])
    assert to_job(job(prompt="a cat", steps=4), settings, offered)[1] == ["bf16", "int8-qat", "int8-qat", "bf16"]
    lacking = LoadedModel(info, ["bf16"], ["ddim"])  # the workers were told not to load the artifact
    assert to_job(job(prompt="a cat", steps=4), settings, lacking)[1] == ["bf16"] * 4
    short = to_job(job(prompt="a cat", steps=2), settings, offered)[1]
    assert short == ["bf16", "bf16"]  # no step between the ends: the high precision throughout
    chosen = Settings(model="tiny-random", default_precision="int8-qat")  # the operator's choice wins
    assert to_job(job(prompt="a cat", steps=2), chosen, offered)[1] == ["int8-qat"] * 2


def test_without_bf16_loaded_a_request_without_precision_runs_the_first_precision_loaded():
    info = {**MODEL.info, "defaults": {**MODEL.info["defaults"], "precision": "int8"}}
    model = LoadedModel(info, ["fp32"], ["ddim"])
    assert to_job(job(prompt="a cat", steps=2), Settings(model="tiny-random"), model)[1] == ["fp32", "fp32"]


def test_a_model_that_declares_its_sizes_serves_only_those_unless_any_size_is_set():
    sized = LoadedModel({**MODEL.info, "sizes": [64, 128]}, MODEL.precisions, MODEL.schedulers)
    settings = Settings(model="tiny-random")
    with pytest.raises(InvalidRequest, match="one of the sizes this model was trained for, 64, 128") as err:
        to_job(job(prompt="x", width=256), settings, sized)
    assert err.value.param == "width"
    params, _ = to_job(job(prompt="x", width=128, height=64), settings, sized)
    assert (params.width, params.height) == (128, 64)
    assert to_job(job(prompt="x", width=256), Settings(model="tiny-random", any_size=True), sized)[0].width == 256
    assert to_job(job(prompt="x", height=256), settings, MODEL)[0].height == 256  # no sizes declared: any


def test_a_distilled_model_samples_with_its_own_scheduler_and_decoder_unless_asked_otherwise():
    own = {**DEFAULTS, "steps": 4, "guidance_scale": 1.0, "scheduler": "lcm", "decoder": "tiny"}
    model = LoadedModel({**MODEL.info, "defaults": own, "decoders": ["full", "tiny"]}, ["bf16"], ["ddim", "lcm"])
    settings = Settings(model="tiny-random")
    params, schedule = to_job(job(prompt="a red circle"), settings, model)
    assert (params.steps, params.guidance_scale, params.scheduler, params.decoder) == (4, 1.0, "lcm", "tiny")
    params, _ = to_job(job(prompt="a red circle", scheduler="ddim", decoder="full"), settings, model)
    assert (params.scheduler, params.decoder) == ("ddim", "full")
    params, _ = to_job(job(prompt="a red circle"), Settings(model="tiny-random", default_scheduler="ddim"), model)
    assert params.scheduler == "ddim"  # the operator's choice over the model's
    with pytest.raises(InvalidRequest) as err:
        to_job(job(prompt="a cat", decoder="tiny"), settings, MODEL)
    assert (err.value.param, err.value.message) == (
        "decoder", "decoder 'tiny' is not offered for this model; it has: full"
    )
