"""``mixdiff quantize bf16``: the BF16 UNet compiled ahead of time loads in a fresh process as an
artifact, computes what the eager BF16 UNet computes with nothing quantized, and is served under
its own name beside the eager ``bf16``."""

from __future__ import annotations

import json

import pytest
import torch
from artifact_helpers import OPTIONS, PROMPTS, rel_mse, run_in_fresh_process
from safetensors import safe_open

from app.pipeline.loop import MixedPrecisionPipeline
from app.pipeline.types import GenerationParams
from app.pipeline.variants import EagerUNet
from quantization.build import build_artifact
from quantization.graph import UNetGraph
from quantization.methods.bf16 import BF16Config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bf16_artifact(tiny_pipe, tmp_path_factory):
    model = tmp_path_factory.mktemp("tiny-model")
    tiny_pipe.save_pretrained(model)
    out = model / "quantized" / "bf16-aot"
    return out, build_artifact(BF16Config(), tiny_pipe, PROMPTS, out, OPTIONS)


def test_bf16_artifact_matches_the_eager_bf16_unet_and_quantizes_nothing(
    tiny_pipe, bf16_artifact, calibration_split, tmp_path
):
    folder, manifest = bf16_artifact
    _, held_out = calibration_split
    eager = EagerUNet(tiny_pipe.unet, "bf16")
    calls = [(x.sample, x.timestep[0], x.encoder_hidden_states) for x in held_out]
    with torch.no_grad():
        fp32 = [UNetGraph(tiny_pipe.unet)(*x.args()) for x in held_out]
        bf16 = [eager(*call) for call in calls]
    result = run_in_fresh_process(folder, calls, tmp_path)
    assert result["precision"] == "bf16-aot"
    for out, want, ref in zip(result["outputs"], bf16, fp32):
        assert out.dtype == torch.float32 and out.shape == want.shape
        # BF16 rounding alone: as close to FP32 as eager BF16 is, far closer than INT8 (~1e-2 on this UNet)
        assert rel_mse(out, ref) < 2 * rel_mse(want, ref) + 1e-5
        assert rel_mse(out, want) < 1e-3

    assert manifest["method"] == "bf16-aot" and manifest["fallback"]["layers"] == []
    assert manifest["fidelity"]["rel_mse"] < 1e-3
    with safe_open(str(folder / "unet-g0.safetensors"), "pt") as f:
        table = json.loads(f.metadata()["table"])
    dtypes = {entry["dtype"] for entry in table}
    assert "int8" not in dtypes and "uint8" not in dtypes  # no quantized weight anywhere


def test_bf16_artifact_is_served_under_its_own_name_beside_eager_bf16(bf16_artifact):
    folder, _ = bf16_artifact
    model = MixedPrecisionPipeline.load(str(folder.parent.parent), ["bf16", "*"])
    assert model.precisions == ["bf16", "bf16-aot"]
    assert model.info.artifacts["bf16-aot"]["method"] == "bf16-aot"
    result = model.generate(GenerationParams(prompt="a red circle", steps=4), ["bf16-aot", "bf16", "bf16", "bf16-aot"])
    assert [step.precision for step in result.steps] == ["bf16-aot", "bf16", "bf16", "bf16-aot"]
    assert result.images


def test_served_with_artifacts_alone_the_worker_drops_the_fp32_unet(bf16_artifact):
    folder, _ = bf16_artifact
    model = MixedPrecisionPipeline.load(str(folder.parent.parent), ["bf16-aot"])
    assert all(p.is_meta for p in model.pipe.unet.parameters())  # only its config is left
    assert model.info.parameters["unet"] > 0
    result = model.generate(GenerationParams(prompt="a red circle", steps=2), ["bf16-aot"] * 2)
    assert result.images


def test_a_bf16_artifact_has_no_fallback_layers():
    with pytest.raises(ValueError, match="quantizes nothing"):
        BF16Config().quantize(None, ["up_blocks.0"], [], None)
