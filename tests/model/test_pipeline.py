"""The embedded model as it ships: a diffusers folder that loads offline and makes 64x64 images."""

import json

import numpy as np
import torch
from transformers import CLIPTokenizer

from shapes import architecture, dataset

MAX_FOLDER_BYTES = 25 * 2**20


def test_folder_is_small_safetensors_with_a_model_card(model_dir):
    files = [p for p in model_dir.rglob("*") if p.is_file() and "quantized" not in p.parts]
    assert sum(p.stat().st_size for p in files) <= MAX_FOLDER_BYTES
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    card = (model_dir / "README.md").read_text()
    assert "python -m shapes.train" in card and "mixdiff eval" in card


def test_tokenizer_loads_offline_from_clip_files(model_dir):
    assert (model_dir / "tokenizer" / "vocab.json").is_file()
    assert (model_dir / "tokenizer" / "merges.txt").is_file()
    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer", local_files_only=True)
    assert tokenizer.model_max_length == architecture.MAX_TOKENS
    text = "a small red circle in the top left on a blue background"
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_pipeline_has_sd_architecture(pipe, model_dir):
    assert pipe.vae_scale_factor == 4
    assert pipe.unet.config.down_block_types[0] == "CrossAttnDownBlock2D"
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.vae.config.scaling_factor != 1.0  # measured on the data, not left at the default
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


def test_few_step_generation_gives_a_64px_image(pipe):
    image = pipe(
        dataset.caption(dataset.single("circle", "red", "large", "center", "white")),
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0.01
