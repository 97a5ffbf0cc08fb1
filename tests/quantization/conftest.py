"""One tiny UNet quantized and compiled once per session (compiling is the slow part)."""

from __future__ import annotations

import pytest
from artifact_helpers import OPTIONS, PROMPTS

from app.pipeline.tiny import build_tiny_pipeline
from quantization import calibration
from quantization.build import build_artifact, split_holdout
from quantization.methods.ptq import PTQConfig


@pytest.fixture(scope="session")
def tiny_pipe():
    return build_tiny_pipeline("sd", seed=0)


@pytest.fixture(scope="session")
def calibration_split(tiny_pipe):
    """``(calibration, held_out)`` exactly as ``build_artifact`` splits them for ``OPTIONS``."""
    captured = calibration.capture(
        tiny_pipe, PROMPTS, sampler=OPTIONS.sampler, steps=OPTIONS.steps, seed=OPTIONS.seed
    )
    return split_holdout(captured, OPTIONS.holdout_every)


@pytest.fixture(scope="session")
def tiny_artifact(tiny_pipe, tmp_path_factory):
    """An INT8 artifact of the tiny UNet in ``<model>/quantized/int8``, and its manifest."""
    out = tmp_path_factory.mktemp("tiny-model") / "quantized" / "int8"
    manifest = build_artifact(PTQConfig(), tiny_pipe, PROMPTS, out, OPTIONS)
    return out, manifest

