"""``mixdiff bench``'s UNet step: its architectures are the real ones, SDXL's inputs are what
its UNet takes, a benchmark without FP32 converts the UNet in place instead of copying it, and
oneDNN's profile of a step is tabulated per variant."""

import pytest
import torch

from app.cli import main
from app.pipeline.tiny import build_tiny_pipeline
from bench import unet_step
from quantization.graph import drop_unused_weights

#: The released models' UNet parameter counts (diffusers' configs of SD 1.5, SD 2.1 and SDXL 1.0 base).
PARAMETERS = {"sd15": 859_520_964, "sd21": 865_910_724, "sdxl": 2_567_463_684}
LATENTS = {"sd15": 64, "sd21": 96, "sdxl": 128}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_architectures_are_the_released_models(name):
    with torch.device("meta"):
        unet = unet_step.ARCHITECTURES[name]()
    assert sum(p.numel() for p in unet.parameters()) == PARAMETERS[name]
    assert unet.config.sample_size == LATENTS[name]


def test_sdxl_inputs_are_what_its_unet_takes():
    unet = build_tiny_pipeline("sdxl").unet
    inputs = unet_step.random_inputs(unet, 500, seed=0)
    text_embeds, time_ids = inputs.added
    assert text_embeds.shape == (2, 32) and time_ids.shape == (2, 6)
    pixels = 8 * unet.config.sample_size
    assert time_ids[0].tolist() == [pixels, pixels, 0, 0, pixels, pixels]
    with torch.no_grad():
        out = unet(*inputs.args()[:3], added_cond_kwargs=inputs.added_cond_kwargs(), return_dict=False)[0]
    assert out.shape == inputs.sample.shape


def test_without_fp32_the_last_bf16_variant_converts_the_unet_in_place(tmp_path):
    unet = build_tiny_pipeline("sdxl").unet
    inputs = unet_step.random_inputs(unet, 500, seed=0)
    with torch.no_grad():
        reference = unet(*inputs.args()[:3], added_cond_kwargs=inputs.added_cond_kwargs(), return_dict=False)[0]
        steps, build = unet_step.build_steps(unet, ["bf16-eager"], inputs, tmp_path)
        out = steps["bf16-eager"]()
    assert unet.dtype == torch.bfloat16  # no FP32 copy kept beside it
    assert unet_step.rel_error(out, reference) < 0.05
    assert set(build["bf16-eager"]) >= {"build_seconds", "rss_added_bytes", "peak_rss_bytes"}


def test_with_fp32_the_unet_stays_fp32(tmp_path):
    unet = build_tiny_pipeline("sd").unet
    inputs = unet_step.random_inputs(unet, 500, seed=0)
    with torch.no_grad():
        steps, _ = unet_step.build_steps(unet, ["fp32-eager", "bf16-eager"], inputs, tmp_path)
    assert unet.dtype == torch.float32
    assert set(steps) == {"fp32-eager", "bf16-eager"}


def test_with_rebuild_a_package_build_drops_the_fp32_weights_and_the_floats_start_again(tmp_path):
    def tiny_unet():
        return build_tiny_pipeline("sd", seed=0).unet

    unet = tiny_unet()
    inputs = unet_step.random_inputs(unet, 500, seed=0)
    with torch.no_grad():
        reference = unet(*inputs.args()[:3], return_dict=False)[0]
        steps, _ = unet_step.build_steps(unet, ["int8-compiled", "fp32-eager"], inputs, tmp_path, rebuild=tiny_unet)
        int8, fp32 = steps["int8-compiled"](), steps["fp32-eager"]()
    assert all(p.is_meta for p in unet.parameters())  # dropped while the package compiled
    assert unet_step.rel_error(fp32, reference) < 1e-5  # the rebuilt UNet is the same UNet
    assert unet_step.rel_error(int8, reference) < 0.2


def test_dropping_unused_weights_keeps_what_the_quantized_graph_computes():
    unet = build_tiny_pipeline("sd", seed=0).unet
    inputs = unet_step.random_inputs(unet, 500, seed=0)
    converted = unet_step.int8_graph(unet, inputs)
    with torch.no_grad():
        before = converted(*inputs.args())
        dropped = drop_unused_weights(converted)
        after = converted(*inputs.args())
    weights = sum(m.weight.numel() for m in unet.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert dropped >= 0.9 * weights  # the quantized layers' FP32 weights are no longer held
    assert torch.equal(before, after)


def test_the_onednn_profile_is_tabulated_per_variant_beside_the_unlogged_step():
    profiles = {
        "bf16-compiled": {"convolution bf16": {"calls": 98, "ms": 500.4}, "matmul bf16": {"calls": 184, "ms": 200.0}},
        "int8-compiled": {"convolution u8": {"calls": 98, "ms": 300.0}, "matmul bf16": {"calls": 10, "ms": 20.0}},
    }
    variants = {"bf16-compiled": {"median_seconds": 1.3}, "int8-compiled": {"median_seconds": 1.2}}
    lines = unet_step.onednn_markdown(profiles, variants)
    assert "| oneDNN primitive | bf16-compiled | int8-compiled |" in lines
    rows = lines[lines.index("|---|---|---|") + 1 :]
    assert rows == [
        "| convolution bf16 | 500 (98) |  |",  # the costliest first
        "| convolution u8 |  | 300 (98) |",
        "| matmul bf16 | 200 (184) | 20 (10) |",
        "| all oneDNN (logged, summed as above) | 700 | 320 |",
        "| the step, unlogged (median) | 1300 | 1200 |",
    ]


def test_the_onednn_profile_goes_with_step_benchmarks_only(capsys):
    assert main(["bench", "--onednn-profile", "--service"]) == 2
    assert "--onednn-profile logs UNet steps" in capsys.readouterr().err
