"""``mixdiff quantize tiny-decoder``: a model folder's tiny decoder in INT8, built once per module,
offered by the pipeline as the decoder ``tiny-int8`` for the size it was built for, and refused
when it is damaged or made from another decoder."""

from __future__ import annotations

import io
import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from app.cli import main
from app.errors import InvalidRequest
from app.pipeline.loader import SETTINGS_FILE, ModelLoadError, load_tiny_decoder
from app.pipeline.loop import MixedPrecisionPipeline
from app.pipeline.tiny import build_tiny_pipeline, tiny_decoder
from app.pipeline.types import GenerationParams
from app.settings import REPO_ROOT
from quantization.runtime import ArtifactError, load_decoder, weight_layout

PARAMS = GenerationParams(prompt="a red circle", steps=2, seed=3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny pipeline folder with a tiny decoder and its INT8 build, made by the command."""
    path = tmp_path_factory.mktemp("tiny-decoder") / "model"
    pipe = build_tiny_pipeline("sd")
    pipe.save_pretrained(path)
    tiny_decoder(pipe.vae_scale_factor).save_pretrained(path / "vae_tiny")
    assert main(["quantize", "tiny-decoder", "--model", str(path), "--prompts", "4", "--steps", "2"]) == 0
    return path


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png))).astype(np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / max(((a - b) ** 2).mean(), 1e-12)))


def test_the_int8_tiny_decoder_is_offered_and_decodes_as_the_tiny_one_does(model):
    manifest = json.loads((model / "vae_tiny" / "int8" / "manifest.json").read_text())
    assert manifest["module"] == "vae_tiny" and manifest["model"]["latent_size"] == [32, 32]
    assert manifest["calibration"]["latents"] == 3 and manifest["fidelity"]["held_out_latents"] == 1
    assert manifest["fidelity"]["int8_psnr_db_mean"] > 40
    # the other decoders in BF16, as the server runs them: the INT8 build is checked against the FP32 weights
    pipeline = MixedPrecisionPipeline.load(str(model), ["fp32"], vae_precision="bf16")
    assert pipeline.info.decoders == ["full", "tiny", "tiny-int8"]
    two = replace(PARAMS, n=2)
    tiny = [_pixels(png) for png in pipeline.generate(replace(two, decoder="tiny"), ["fp32"] * 2).images]
    int8 = [_pixels(png) for png in pipeline.generate(replace(two, decoder="tiny-int8"), ["fp32"] * 2).images]
    full = _pixels(pipeline.generate(PARAMS, ["fp32"] * 2).images[0])
    assert tiny[0].shape == int8[0].shape == (64, 64, 3)
    assert not np.array_equal(tiny[0], int8[0])  # INT8 rounding, not the same decoder run again
    assert _psnr(int8[0], tiny[0]) > 35 > _psnr(int8[0], full)  # the tiny decoder in INT8, not the VAE
    assert _psnr(int8[1], tiny[1]) > 35 > _psnr(int8[1], int8[0])  # each image of the batch its own


def test_another_size_than_the_one_it_was_built_for_is_refused_before_any_step(model):
    pipeline = MixedPrecisionPipeline.load(str(model), ["fp32"])
    steps = []
    with pytest.raises(InvalidRequest, match="decoder 'tiny-int8' was built for 64x64 images, not 48x64"):
        pipeline.generate(replace(PARAMS, decoder="tiny-int8", width=48), ["fp32"] * 2, on_step=steps.append)
    assert not steps


def test_an_int8_decoder_made_from_another_tiny_decoder_is_not_offered(model, tmp_path, caplog):
    other = shutil.copytree(model, tmp_path / "other")
    tiny_decoder(2, seed=1).save_pretrained(other / "vae_tiny")  # new weights beside the old INT8 build
    with caplog.at_level(logging.WARNING):
        pipeline = MixedPrecisionPipeline.load(str(other), ["fp32"])
    assert pipeline.info.decoders == ["full", "tiny"]
    assert "decoder tiny-int8 unavailable" in caplog.text and "different tiny decoder" in caplog.text
    (other / SETTINGS_FILE).write_text(json.dumps({"sizes": [64], "defaults": {"decoder": "tiny-int8"}}))
    with caplog.at_level(logging.WARNING):
        pipeline = MixedPrecisionPipeline.load(str(other), ["fp32"])
    assert pipeline.info.defaults["decoder"] == "tiny" and "default decoder tiny-int8 unavailable" in caplog.text


def test_the_default_decoder_may_be_tiny_int8_where_the_model_serves_its_one_size(model, tmp_path):
    own = shutil.copytree(model, tmp_path / "own")
    (own / SETTINGS_FILE).write_text(json.dumps({"sizes": [64], "defaults": {"decoder": "tiny-int8"}}))
    assert MixedPrecisionPipeline.load(str(own), ["fp32"]).info.defaults["decoder"] == "tiny-int8"
    (own / SETTINGS_FILE).write_text(json.dumps({"sizes": [48, 64], "defaults": {"decoder": "tiny-int8"}}))
    with pytest.raises(ModelLoadError, match=r"decodes 64x64 images only, so the model's sizes must be \[64\]"):
        MixedPrecisionPipeline.load(str(own), ["fp32"])


def test_decoding_leaves_no_memory_behind(model):
    decoder = MixedPrecisionPipeline.load(str(model), ["fp32"]).decoders["tiny-int8"]
    latents = torch.randn(1, 4, 32, 32)
    for _ in range(20):
        decoder.decode(latents)
    before = psutil.Process().memory_info().rss
    for _ in range(300):
        decoder.decode(latents)
    assert psutil.Process().memory_info().rss - before < 8 << 20  # a leaked 64x64 image a call would be 15 MB


@pytest.mark.parametrize("name", ["mixdiff-shapes", "mixdiff-shapes-lcm"])
def test_the_embedded_models_int8_tiny_decoders_verify_and_need_avx512_not_amx(name):
    folder = REPO_ROOT / "models" / name
    decoder = load_decoder(folder / "vae_tiny" / "int8", load_tiny_decoder(folder), "tiny-int8")
    assert decoder.image_size == (64, 64) and decoder.manifest["calibration"]["held_out"] == 8
    assert "avx512f" in decoder.manifest["runtime"]["cpu_features"]
    assert not any("amx" in flag for flag in decoder.manifest["runtime"]["cpu_features"])
    assert decoder.manifest["fidelity"]["int8_psnr_db_min"] > 40

def test_a_decoder_laid_out_for_the_other_kind_of_cpu_loads_with_a_warning(model, tmp_path, caplog):
    copy = shutil.copytree(model / "vae_tiny", tmp_path / "vae_tiny")
    manifest_path = copy / "int8" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    other = {"amx": "avx512", "avx512": "amx"}[weight_layout()]
    manifest_path.write_text(json.dumps({**manifest, "runtime": {**manifest["runtime"], "weight_layout": other}}))
    with caplog.at_level(logging.WARNING, logger="quantization.runtime"):
        decoder = load_decoder(copy / "int8", load_tiny_decoder(model), "tiny-int8")
    assert decoder.image_size == (64, 64)
    assert "weights are laid out for a CPU" in caplog.text


def test_a_damaged_package_or_manifest_is_refused_naming_it(model, tmp_path):
    copy = shutil.copytree(model / "vae_tiny", tmp_path / "vae_tiny")
    decoder = load_tiny_decoder(model)
    manifest_path = copy / "int8" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "model": {**manifest["model"], "image_size": None}}))
    with pytest.raises(ArtifactError, match="does not describe a decoder package"):
        load_decoder(copy / "int8", decoder, "tiny-int8")
    manifest_path.write_text(json.dumps(manifest))
    package = copy / "int8" / "decoder.pt2"
    package.write_bytes(package.read_bytes()[:-16] + bytes(16))
    with pytest.raises(ArtifactError, match="file decoder.pt2 does not match its sha256"):
        load_decoder(copy / "int8", decoder, "tiny-int8")


def test_the_command_refuses_a_folder_without_a_tiny_decoder_or_with_a_build_already(model, tmp_path, capsys):
    build_tiny_pipeline("sd").save_pretrained(tmp_path / "plain")
    assert main(["quantize", "tiny-decoder", "--model", str(tmp_path / "plain")]) == 2
    assert "has no tiny decoder (vae_tiny/)" in capsys.readouterr().err
    assert main(["quantize", "tiny-decoder", "--model", str(model)]) == 2
    assert "vae_tiny/int8 already exists; remove it to build it again" in capsys.readouterr().err
