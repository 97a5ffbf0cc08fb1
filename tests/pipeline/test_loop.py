import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from app.errors import InvalidRequest
from app.pipeline.loader import SETTINGS_FILE, ModelLoadError, generation_defaults, model_sizes
from app.pipeline.loop import MixedPrecisionPipeline
from app.pipeline.schedulers import SCHEDULERS, make_scheduler
from app.pipeline.tiny import build_tiny_pipeline, tiny_decoder
from app.pipeline.types import GenerationParams
from app.pipeline.variants import build_variants, expand


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


class Spy:
    """Wraps a variant and counts its calls."""

    def __init__(self, inner):
        self.inner, self.precision, self.calls = inner, inner.precision, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_each_step_runs_the_variant_its_schedule_names(tiny):
    spies = {name: Spy(v) for name, v in tiny.variants.items()}
    spied = MixedPrecisionPipeline(tiny.pipe, spies, tiny.info)
    schedule = ["bf16", "fp32", "fp32", "bf16", "bf16"]
    seen = []
    result = spied.generate(GenerationParams(prompt="a red circle", steps=5), schedule, on_step=seen.append)
    assert [r.precision for r in result.steps] == schedule
    assert seen == result.steps
    assert (spies["bf16"].calls, spies["fp32"].calls) == (3, 2)
    assert result.schedule == schedule
    assert all(r.seconds > 0 for r in result.steps)
    assert result.text_encode_seconds > 0 and result.vae_decode_seconds > 0


def test_warmup_runs_every_variant_and_decodes_once(tiny):
    spies = {name: Spy(v) for name, v in tiny.variants.items()}
    spied = MixedPrecisionPipeline(tiny.pipe, spies, tiny.info)
    vae, decodes = tiny.pipe.vae, []
    original = vae.decode
    vae.decode = lambda *args, **kwargs: decodes.append(1) or original(*args, **kwargs)
    try:
        spied.warmup(2)
    finally:
        del vae.decode  # the instance attribute; the class's method is back
    assert [spy.calls for spy in spies.values()] == [2, 2]
    assert len(decodes) == 1


def test_warmup_skips_variants_compiled_ahead_of_time(tiny):
    spies = {name: Spy(v) for name, v in tiny.variants.items()}
    spies["bf16"].warmed_up = True  # as an artifact's PackagedUNet says
    MixedPrecisionPipeline(tiny.pipe, spies, tiny.info).warmup(1)
    assert (spies["fp32"].calls, spies["bf16"].calls) == (1, 0)
    spies["fp32"].warmed_up = True
    MixedPrecisionPipeline(tiny.pipe, spies, tiny.info).warmup(1)  # nothing left to warm: no generation
    assert (spies["fp32"].calls, spies["bf16"].calls) == (1, 0)


def test_same_seed_same_image_other_seed_other_image(tiny):
    params = GenerationParams(prompt="a red circle", steps=3, seed=7)
    first = tiny.generate(params, ["bf16"] * 3).images[0]
    assert tiny.generate(params, ["bf16"] * 3).images[0] == first
    other = tiny.generate(GenerationParams(prompt="a red circle", steps=3, seed=8), ["bf16"] * 3).images[0]
    assert other != first


def test_schedules_share_the_initial_noise(tiny):
    """fp32 and bf16 images of one seed are far closer than images of two seeds."""
    params = GenerationParams(prompt="a red circle", steps=3, seed=3)
    fp32 = pixels(tiny.generate(params, ["fp32"] * 3).images[0])
    bf16 = pixels(tiny.generate(params, ["bf16"] * 3).images[0])
    other = pixels(tiny.generate(GenerationParams(prompt="a red circle", steps=3, seed=4), ["fp32"] * 3).images[0])
    assert np.abs(fp32 - bf16).mean() < 0.2 * np.abs(fp32 - other).mean()


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_generates(tiny, scheduler):
    params = GenerationParams(prompt="a cat", steps=3, scheduler=scheduler, n=2, width=64, height=48)
    result = tiny.generate(params, ["fp32", "bf16", "fp32"])
    assert len(result.images) == 2
    assert Image.open(io.BytesIO(result.images[0])).size == (64, 48)
    assert result.steps[0].precision == "fp32" and result.steps[-1].precision == "fp32"
    assert len(result.steps) >= 3  # PNDM calls the UNet once more than it has steps


@pytest.mark.parametrize("family, prediction_type", [("sdxl", "epsilon"), ("sd", "v_prediction")])
def test_sdxl_and_v_prediction_models_generate(family, prediction_type):
    pipe = build_tiny_pipeline(family, prediction_type=prediction_type)
    model = MixedPrecisionPipeline.from_pipe(pipe, family, ["fp32", "bf16"])
    assert model.info.prediction_type == prediction_type
    result = model.generate(GenerationParams(prompt="a cat", steps=2, negative_prompt="a dog"), ["bf16", "fp32"])
    image = pixels(result.images[0])
    assert image.shape == (64, 64, 3)
    assert [r.precision for r in result.steps] == ["bf16", "fp32"]


def test_zero_terminal_snr_models_offer_only_schedulers_that_rescale_their_betas():
    pipe = build_tiny_pipeline("sd", prediction_type="v_prediction")
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing"
    )
    model = MixedPrecisionPipeline.from_pipe(pipe, "sd", ["fp32"])
    assert model.schedulers == ["ddim", "euler", "euler_a", "dpmpp", "lcm", "tcd", "euler_a_trailing"]
    for scheduler in model.schedulers:
        assert make_scheduler(scheduler, pipe.scheduler.config).alphas_cumprod[-1] <= 2**-24  # the model's schedule
        result = model.generate(GenerationParams(prompt="a cat", steps=2, scheduler=scheduler), ["fp32"] * 2)
        assert len(result.images) == 1
    with pytest.raises(InvalidRequest, match="unknown scheduler 'pndm'; available: ddim, euler, euler_a, dpmpp, lcm"):
        model.generate(GenerationParams(prompt="a cat", steps=2, scheduler="pndm"), ["fp32"] * 2)


def test_overlong_prompt_is_truncated_with_a_warning(tiny):
    result = tiny.generate(GenerationParams(prompt="red " * 100, steps=1), ["bf16"])
    assert result.warnings == ["prompt is 102 tokens; the text encoder reads 77, the rest was dropped"]


def test_pipeline_folder_loads_offline_and_int8_without_artifact_says_why(tmp_path):
    build_tiny_pipeline("sd").save_pretrained(tmp_path / "model")
    model = MixedPrecisionPipeline.load(str(tmp_path / "model"), ["bf16", "int8", "fp16"])
    assert model.precisions == ["bf16"]
    assert model.schedulers == list(SCHEDULERS)
    assert model.info.path == str(tmp_path / "model") and model.info.default_size == 64
    assert model.info.defaults == generation_defaults(None)  # mixdiff's own
    assert "mixdiff quantize ptq" in model.info.unavailable["int8"]
    assert "unknown precision 'fp16'" in model.info.unavailable["fp16"]
    assert len(model.generate(GenerationParams(prompt="a cat", steps=1), ["bf16"]).images) == 1


def test_an_artifact_left_out_of_the_precisions_is_listed_as_unavailable(tmp_path):
    pipe = build_tiny_pipeline("sd")
    (tmp_path / "quantized" / "int8-qat").mkdir(parents=True)
    variants, unavailable = build_variants(pipe, ["fp32"], model_dir=tmp_path)
    assert list(variants) == ["fp32"]
    assert unavailable == {
        "int8-qat": "not loaded: the precisions to load are fp32; add 'int8-qat', or '*' for all"
    }


def test_folders_that_are_not_sd_pipelines_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        MixedPrecisionPipeline.load(str(tmp_path), ["bf16"])
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="holds a FluxPipeline"):
        MixedPrecisionPipeline.load(str(tmp_path), ["bf16"])


@pytest.mark.slow
def test_compiled_variant_matches_eager(tiny):
    """torch.compile (Inductor, frozen weights) changes speed, not images."""
    compiled = MixedPrecisionPipeline.load("tiny-random", ["bf16"], compile=True)
    params = GenerationParams(prompt="a red circle", steps=2, seed=5)
    got = pixels(compiled.generate(params, ["bf16"] * 2).images[0])
    want = pixels(tiny.generate(params, ["bf16"] * 2).images[0])
    other = pixels(tiny.generate(GenerationParams(prompt="a red circle", steps=2, seed=6), ["bf16"] * 2).images[0])
    assert np.abs(got - want).mean() < 0.2 * np.abs(other - want).mean()


class FixedSize(Spy):
    """A variant built for the default size only, as int8 artifacts are."""

    def supports(self, batch, height, width):
        return (height, width) == (64, 64)


def test_fixed_size_variants_refuse_other_sizes_before_running(tiny):
    fixed = FixedSize(tiny.variants["bf16"])
    model = MixedPrecisionPipeline(tiny.pipe, {"bf16": fixed, "fp32": tiny.variants["fp32"]}, tiny.info)
    with pytest.raises(InvalidRequest, match="'bf16' was built for 64x64 images, not 48x64"):
        model.generate(GenerationParams(prompt="a cat", steps=2, width=48), ["fp32", "bf16"])
    assert fixed.calls == 0
    assert len(model.generate(GenerationParams(prompt="a cat", steps=2), ["fp32", "bf16"]).images) == 1
    assert fixed.calls == 1


def test_bf16_without_fp32_converts_the_unet_instead_of_copying_it():
    pipe = build_tiny_pipeline("sd")
    variants, _ = build_variants(pipe, ["bf16", "fp32"])
    assert list(variants) == ["bf16", "fp32"]  # the order asked for
    assert pipe.unet.dtype == torch.float32 and variants["bf16"].unet is not pipe.unet

    pipe = build_tiny_pipeline("sd")
    variants, _ = build_variants(pipe, ["bf16"])
    assert variants["bf16"].unet is pipe.unet and pipe.unet.dtype == torch.bfloat16


def test_bf16_vae_decodes_the_same_latents_to_nearly_the_same_image(tiny):
    params = GenerationParams(prompt="a red circle", steps=2, seed=5)
    bf16_vae = MixedPrecisionPipeline.from_pipe(build_tiny_pipeline("sd"), "sd", ["fp32"], vae_precision="bf16")
    assert bf16_vae.pipe.vae.dtype == torch.bfloat16 and bf16_vae.info.vae_precision == "bf16"
    assert tiny.info.vae_precision == "fp32"
    fp32 = pixels(tiny.generate(params, ["fp32"] * 2).images[0])
    bf16 = pixels(bf16_vae.generate(params, ["fp32"] * 2).images[0])
    other = pixels(tiny.generate(GenerationParams(prompt="a red circle", steps=2, seed=6), ["fp32"] * 2).images[0])
    assert fp32.shape == bf16.shape
    assert np.abs(fp32 - bf16).mean() < 0.2 * np.abs(fp32 - other).mean()
    with pytest.raises(ValueError, match="unknown VAE precision 'fp16'"):
        MixedPrecisionPipeline.from_pipe(build_tiny_pipeline("sd"), "sd", ["fp32"], vae_precision="fp16")


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_bf16_text_encoders_condition_the_fp32_unet_nearly_as_fp32_ones_do(family):
    params = GenerationParams(prompt="a red circle", negative_prompt="a blue square", steps=2, seed=5)
    other_params = GenerationParams(prompt="a green star", negative_prompt="a blue square", steps=2, seed=5)
    fp32 = MixedPrecisionPipeline.from_pipe(build_tiny_pipeline(family), family, ["fp32"])
    bf16 = MixedPrecisionPipeline.from_pipe(
        build_tiny_pipeline(family), family, ["fp32"], text_encoder_precision="bf16"
    )
    encoders = [bf16.pipe.text_encoder] + ([bf16.pipe.text_encoder_2] if family == "sdxl" else [])
    assert all(encoder.dtype == torch.bfloat16 for encoder in encoders)
    assert bf16.info.text_encoder_precision == "bf16" and fp32.info.text_encoder_precision == "fp32"
    text, reference = (model._encode(params, cfg=True, width=64, height=64) for model in (bf16, fp32))
    tensors = [text["hidden"]] + ([*text["added"].values()] if family == "sdxl" else [])
    assert all(t.dtype == torch.float32 for t in tensors)  # what every UNet variant is handed
    other = fp32._encode(other_params, cfg=True, width=64, height=64)

    def distance(a, b):
        return float((a["hidden"] - b["hidden"]).norm() / b["hidden"].norm())

    assert distance(text, reference) < 0.02 and distance(other, reference) > 10 * distance(text, reference)
    image = pixels(bf16.generate(params, ["fp32"] * 2).images[0])
    fp32_image = pixels(fp32.generate(params, ["fp32"] * 2).images[0])
    other_image = pixels(fp32.generate(other_params, ["fp32"] * 2).images[0])
    assert np.abs(image - fp32_image).mean() < 0.2 * np.abs(other_image - fp32_image).mean()
    with pytest.raises(ValueError, match="unknown text encoder precision 'fp16'"):
        MixedPrecisionPipeline.from_pipe(build_tiny_pipeline(family), family, ["fp32"], text_encoder_precision="fp16")


def test_a_model_folder_may_set_its_own_steps_guidance_and_precision(tmp_path):
    file = tmp_path / SETTINGS_FILE
    own = {"steps": 30, "guidance_scale": 7.5, "precision": "bf16", "scheduler": "ddim", "decoder": "full"}
    assert generation_defaults(tmp_path) == generation_defaults(None) == own
    file.write_text(json.dumps({"defaults": {"guidance_scale": 5}}))
    assert generation_defaults(tmp_path) == {**own, "guidance_scale": 5.0}
    split = {"high": "bf16", "low": "int8", "first": 5, "last": 5}
    file.write_text(json.dumps({"defaults": {"steps": 4, "guidance_scale": 0, "precision": split}}))
    assert generation_defaults(tmp_path) == {**own, "steps": 4, "guidance_scale": 0.0, "precision": split}
    few_steps = {"steps": 4, "guidance_scale": 1.0, "scheduler": "lcm", "decoder": "tiny"}
    file.write_text(json.dumps({"defaults": few_steps}))
    assert generation_defaults(tmp_path) == {**own, **few_steps}
    for bad, message in [
        ("{", "is not valid JSON"),
        (json.dumps({"guidance_scale": 5}), 'must be a JSON object with "defaults" and/or "sizes"'),
        (json.dumps({"defaults": {"sampler": "ddim"}}), "may set only steps, guidance_scale, precision, scheduler"),
        (json.dumps({"defaults": {"scheduler": 3}}), "scheduler must be a scheduler's name"),
        (json.dumps({"defaults": {"decoder": "taesd"}}), "decoder must be one of full, tiny"),
        (json.dumps({"defaults": {"precision": {"high": "bf16"}}}), "precision must be a precision name"),
        (json.dumps({"defaults": {"precision": {**split, "first": -1}}}), "precision must be a precision name"),
        (json.dumps({"defaults": {"steps": 2.5}}), "steps must be a whole number"),
        (json.dumps({"defaults": {"guidance_scale": 60}}), "guidance_scale must be a number from 0 to 50"),
    ]:
        file.write_text(bad)
        with pytest.raises(ModelLoadError, match=message):
            generation_defaults(tmp_path)


def test_a_model_folder_may_declare_the_sizes_it_serves(tmp_path):
    file = tmp_path / SETTINGS_FILE
    assert model_sizes(tmp_path, 64) is None  # no file: any size
    file.write_text(json.dumps({"defaults": {"steps": 4}}))
    assert model_sizes(tmp_path, 64) is None
    file.write_text(json.dumps({"sizes": [128, 64, 64]}))
    assert model_sizes(tmp_path, 64) == [64, 128]
    assert generation_defaults(tmp_path)["steps"] == 30
    for bad, message in [
        ([], "sizes must be a list of pixel sizes"),
        ([64, 60], "sizes must be a list of pixel sizes"),
        ([True], "sizes must be a list of pixel sizes"),
        ("64", "sizes must be a list of pixel sizes"),
        ([128], "must include the model's own size, 64"),
    ]:
        file.write_text(json.dumps({"sizes": bad}))
        with pytest.raises(ModelLoadError, match=message):
            model_sizes(tmp_path, 64)


def test_a_star_among_the_precisions_stands_for_every_artifact_of_the_model(tmp_path):
    for name in ("int8-qat", "int8"):
        (tmp_path / "quantized" / name).mkdir(parents=True)
    assert expand(["bf16", "*"], tmp_path) == ["bf16", "int8", "int8-qat"]
    assert expand(["int8-qat", "*", "bf16"], tmp_path) == ["int8-qat", "int8", "bf16"]  # each once, in order
    assert expand(["fp32", "*"], None) == ["fp32"]  # a pipeline built in code has no artifacts
    assert expand(["*"], tmp_path / "elsewhere") == []


def _folder_with_tiny_decoder(path, defaults: dict | None = None):
    pipe = build_tiny_pipeline("sd")
    pipe.save_pretrained(path)
    tiny_decoder(pipe.vae_scale_factor).save_pretrained(path / "vae_tiny")
    if defaults is not None:
        (path / SETTINGS_FILE).write_text(json.dumps({"defaults": defaults}))
    return path


def test_a_folder_with_a_tiny_decoder_offers_it_per_request(tmp_path):
    model = MixedPrecisionPipeline.load(str(_folder_with_tiny_decoder(tmp_path / "model")), ["fp32"])
    assert model.info.decoders == ["full", "tiny"] and model.info.defaults["decoder"] == "full"
    assert model.info.parameters["vae_tiny"] > 0
    params = GenerationParams(prompt="a red circle", steps=2, seed=3, width=64, height=48)
    full = pixels(model.generate(params, ["fp32"] * 2).images[0])
    tiny = pixels(model.generate(replace(params, decoder="tiny"), ["fp32"] * 2).images[0])
    assert full.shape == tiny.shape == (48, 64, 3)
    assert not np.array_equal(full, tiny)  # another network decoded the same latents
    without = MixedPrecisionPipeline.from_pipe(build_tiny_pipeline("sd"), "sd", ["fp32"])
    assert without.info.decoders == ["full"]
    with pytest.raises(InvalidRequest, match="decoder 'tiny' is not offered for this model; it has: full"):
        without.generate(replace(params, decoder="tiny"), ["fp32"] * 2)


def test_a_folder_may_make_its_tiny_decoder_and_a_few_step_scheduler_the_defaults(tmp_path):
    few_steps = {"steps": 4, "guidance_scale": 1.0, "scheduler": "lcm", "decoder": "tiny"}
    model = MixedPrecisionPipeline.load(str(_folder_with_tiny_decoder(tmp_path / "model", few_steps)), ["fp32"])
    assert {k: model.info.defaults[k] for k in few_steps} == few_steps
    build_tiny_pipeline("sd").save_pretrained(tmp_path / "no-tiny")
    (tmp_path / "no-tiny" / SETTINGS_FILE).write_text(json.dumps({"defaults": {"decoder": "tiny"}}))
    with pytest.raises(ModelLoadError, match="its default decoder 'tiny' needs a vae_tiny/"):
        MixedPrecisionPipeline.load(str(tmp_path / "no-tiny"), ["fp32"])
    (tmp_path / "no-tiny" / SETTINGS_FILE).write_text(json.dumps({"defaults": {"scheduler": "karras"}}))
    with pytest.raises(ModelLoadError, match="scheduler 'karras' cannot sample this model; it can: ddim, pndm"):
        MixedPrecisionPipeline.load(str(tmp_path / "no-tiny"), ["fp32"])
