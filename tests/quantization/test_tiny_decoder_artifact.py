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
import pytest
from PIL import Image

from app.cli import main
from app.errors import InvalidRequest
from app.pipeline.loader import SETTINGS_FILE, ModelLoadError
from app.pipeline.loop import MixedPrecisionPipeline
from app.pipeline.tiny import build_tiny_pipeline, tiny_decoder
from app.pipeline.types import GenerationParams
from quantization.runtime import ArtifactError, load_decoder

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
    pipeline = MixedPrecisionPipeline.load(str(model), ["fp32"])
    assert pipeline.info.decoders == ["full", "tiny", "tiny-int8"]
    tiny = _pixels(pipeline.generate(replace(PARAMS, decoder="tiny"), ["fp32"] * 2).images[0])
    int8 = _pixels(pipeline.generate(replace(PARAMS, decoder="tiny-int8"), ["fp32"] * 2).images[0])
    full = _pixels(pipeline.generate(PARAMS, ["fp32"] * 2).images[0])
    assert tiny.shape == int8.shape == (64, 64, 3)
    assert not np.array_equal(tiny, int8)  # INT8 rounding, not the same decoder run again
    assert _psnr(int8, tiny) > 35 > _psnr(int8, full)  # the tiny decoder in INT8, not the VAE
    images = pipeline.generate(replace(PARAMS, decoder="tiny-int8", n=2), ["fp32"] * 2).images
    assert len(images) == 2 and all(_pixels(png).shape == (64, 64, 3) for png in images)


def test_another_size_than_the_one_it_was_built_for_is_refused_before_any_step(model):
    pipeline = MixedPrecisionPipeline.load(str(model), ["fp32"])
    steps = []
    with pytest.raises(InvalidRequest, match="decoder 'tiny-int8' was built for 64x64 images, not 48x64"):
        pipeline.generate(replace(PARAMS, decoder="tiny-int8", width=48), ["fp32"] * 2, on_step=steps.append)
    assert not steps


def test_an_int8_decoder_made_from_another_tiny_decoder_is_not_offered(model, tmp_path, caplog):
    other = shutil.copytree(model, tmp_path / "other")
    tiny_decoder(8, seed=1).save_pretrained(other / "vae_tiny")  # new weights beside the old INT8 build
    with caplog.at_level(logging.WARNING):
        pipeline = MixedPrecisionPipeline.load(str(other), ["fp32"])
    assert pipeline.info.decoders == ["full", "tiny"]
    assert "decoder tiny-int8 unavailable" in caplog.text and "different tiny decoder" in caplog.text
    (other / SETTINGS_FILE).write_text(json.dumps({"defaults": {"decoder": "tiny-int8"}}))
    with pytest.raises(ModelLoadError, match="default decoder 'tiny-int8' needs a vae_tiny/int8/ that loads"):
        MixedPrecisionPipeline.load(str(other), ["fp32"])


def test_a_damaged_package_is_refused_naming_it(model, tmp_path):
    copy = shutil.copytree(model / "vae_tiny", tmp_path / "vae_tiny")
    package = copy / "int8" / "decoder.pt2"
    package.write_bytes(package.read_bytes()[:-16] + bytes(16))
    decoder = MixedPrecisionPipeline.load(str(model), ["fp32"]).decoders["tiny"]
    with pytest.raises(ArtifactError, match="file decoder.pt2 does not match its sha256"):
        load_decoder(copy / "int8", decoder, "tiny-int8")


def test_the_command_refuses_a_folder_without_a_tiny_decoder_or_with_a_build_already(model, tmp_path, capsys):
    build_tiny_pipeline("sd").save_pretrained(tmp_path / "plain")
    assert main(["quantize", "tiny-decoder", "--model", str(tmp_path / "plain")]) == 2
    assert "has no tiny decoder (vae_tiny/)" in capsys.readouterr().err
    assert main(["quantize", "tiny-decoder", "--model", str(model)]) == 2
    assert "vae_tiny/int8 already exists; remove it to build it again" in capsys.readouterr().err
