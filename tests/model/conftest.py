"""Fixtures of the embedded shapes model: its folder, the loaded pipeline and the yardstick."""

from __future__ import annotations

import pytest
import torch

from app.settings import DEFAULT_MODEL
from shapes.evaluate import DEFAULT_YARDSTICK


@pytest.fixture(scope="session")
def model_dir():
    assert (DEFAULT_MODEL / "model_index.json").is_file(), f"the embedded model is missing from {DEFAULT_MODEL}"
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def pipe(model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def classifier():
    from shapes import yardstick

    torch.manual_seed(0)
    return yardstick.load(DEFAULT_YARDSTICK)
