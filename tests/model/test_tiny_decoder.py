"""The tiny-decoder stage of the recipe, a few steps of it, on the embedded model's own VAE."""

import json

import pytest
import torch
from diffusers import AutoencoderTiny

from shapes import train

FEW = ["--steps", "6", "--batch", "4", "--eval-images", "4", "--eval-prompts", "1", "--eval-steps", "2",
       "--timing-reps", "1", "--log-every", "3"]


@pytest.mark.slow
def test_tiny_decoder_stage_writes_a_loadable_decoder_whose_loss_fell(tmp_path, model_dir):
    out = tmp_path / "vae_tiny"
    assert train.main(["tiny-decoder", "--model", str(model_dir), "--out", str(out), *FEW]) == 0

    tiny = AutoencoderTiny.from_pretrained(out)
    assert tiny.config.scaling_factor == 1.0  # as TAESD: it decodes the latents the UNet sees
    assert "_name_or_path" not in json.loads((out / "config.json").read_text())  # no build paths
    with torch.no_grad():
        pixels = tiny.decode(torch.randn(2, 4, 16, 16)).sample
    assert pixels.shape == (2, 3, 64, 64)

    fidelity = json.loads((out / "fidelity.json").read_text())
    assert fidelity["train_loss"]["last_tenth"] < fidelity["train_loss"]["first_tenth"]
    assert fidelity["held_out"]["images"] == 4 and fidelity["generated"]["images"] == 1
    for measured in (fidelity["held_out"], fidelity["generated"]):
        assert {"psnr_db", "ssim", "reading_agreement"} <= measured.keys()
    assert set(fidelity["decode_ms"]) == {"full", "tiny"}
    assert set(fidelity["decode_ms"]["tiny"]["bf16"]) == {"batch_1", "batch_8"}
