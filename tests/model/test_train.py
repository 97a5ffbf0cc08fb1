"""The denoiser stage of the recipe, a few steps of it: from scratch, then continued with ``--init``."""

import json

from safetensors.torch import load_file

from shapes import train

FEW = ["--pool", "64", "--text-steps", "2", "--text-batch", "8", "--steps", "2", "--batch", "4", "--no-compile"]
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors"}


def _weights(folder, component):
    return load_file(folder / component / WEIGHTS[component])


def test_denoiser_continues_a_pipeline_keeping_its_text_encoder(tmp_path, model_dir):
    vae = ["--vae", str(model_dir / "vae")]
    first, second = tmp_path / "first" / "model", tmp_path / "second" / "model"
    assert train.main(["denoiser", *vae, *FEW, "--work", str(first.parent), "--out", str(first)]) == 0
    assert train.main(
        ["denoiser", *vae, *FEW, "--init", str(first), "--seed", "1", "--work", str(second.parent), "--out", str(second)]
    ) == 0

    assert "_name_or_path" not in json.loads((second / "unet" / "config.json").read_text())  # no build paths
    text_before, text_after = _weights(first, "text_encoder"), _weights(second, "text_encoder")
    assert all(text_before[k].equal(text_after[k]) for k in text_before)
    unet_before, unet_after = _weights(first, "unet"), _weights(second, "unet")
    moved = max(float((unet_after[k] - unet_before[k]).abs().max()) for k in unet_before)
    # Two warm-up steps move the UNet a little from where it was; a fresh one would differ everywhere.
    assert 0 < moved < 1e-3
