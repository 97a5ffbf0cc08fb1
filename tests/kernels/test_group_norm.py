"""mixdiff.group_norm against ATen's group_norm (+ silu), alone and inside a diffusers UNet."""

from __future__ import annotations

import collections
import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D

import kernels
from app.pipeline.tiny import build_tiny_pipeline
from app.pipeline.variants import EagerUNet
from kernels.group_norm import use_fused_group_norm


@pytest.fixture(scope="module", autouse=True)
def _built():
    kernels.load()


def _x(n, c, h, w, *, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g) * 3 + offset
    return x.to(memory_format=torch.channels_last).bfloat16()


def _affine(c, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, generator=g).bfloat16(), torch.randn(c, generator=g).bfloat16()


def _reference(x, groups, weight, bias, silu, eps=1e-5):
    weight, bias = (None if t is None else t.float() for t in (weight, bias))
    y = F.group_norm(x.float(), groups, weight, bias, eps)
    return F.silu(y) if silu else y


def _rel(x, ref):
    return float((x.float() - ref).norm() / ref.norm())


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize(
    "n,c,h,w,groups",
    [
        (2, 320, 64, 64, 32),  # SD 1.5 at 64x64 latents
        (2, 1920, 16, 16, 32),
        (1, 2560, 8, 8, 32),
        (2, 48, 9, 7, 4),  # rows not a multiple of the kernel's blocks
        (3, 40, 5, 3, 8),  # channels not a multiple of 16, 5 per group
        (1, 6, 1, 1, 3),
    ],
)
def test_matches_group_norm(n, c, h, w, groups, silu):
    x = _x(n, c, h, w)
    weight, bias = _affine(c)
    out = torch.ops.mixdiff.group_norm(x, groups, weight, bias, 1e-5, silu)
    aten = F.group_norm(x, groups, weight, bias, 1e-5)
    aten = F.silu(aten) if silu else aten
    reference = _reference(x, groups, weight, bias, silu)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    # the output's BF16 rounding: as close to FP32 as ATen's own BF16 result
    assert _rel(out, reference) <= 1.2 * _rel(aten, reference) + 1e-3


def test_a_large_mean_does_not_cancel():
    """Sums of squares around zero would lose a small variance under a mean of 1000."""
    x = _x(2, 64, 16, 16, offset=1000.0)
    out = torch.ops.mixdiff.group_norm(x, 8, None, None, 1e-5, False)
    assert _rel(out, _reference(x, 8, None, None, False)) < 1e-2


def test_other_layouts_and_dtypes_are_aten():
    x = _x(2, 32, 6, 6)
    weight, bias = _affine(32)
    contiguous = x.contiguous()
    out = torch.ops.mixdiff.group_norm(contiguous, 4, weight, bias, 1e-6, True)
    torch.testing.assert_close(out, F.silu(F.group_norm(contiguous, 4, weight, bias, 1e-6)), rtol=0, atol=0)
    fp32 = x.float()
    out = torch.ops.mixdiff.group_norm(fp32, 4, weight.float(), bias.float(), 1e-6, False)
    torch.testing.assert_close(out, F.group_norm(fp32, 4, weight.float(), bias.float(), 1e-6), rtol=0, atol=0)


def test_fake_rule():
    x = _x(2, 32, 8, 8)
    weight, bias = _affine(32)
    args = (x, 8, weight, bias, 1e-5, True)
    torch.library.opcheck(torch.ops.mixdiff.group_norm.default, args, test_utils=("test_schema", "test_faketensor"))


def _run_counting(unet, sample, text):
    """``(output, {op name: calls})`` of one UNet call."""
    with torch.no_grad(), torch.profiler.profile() as prof:
        out = unet(sample, 10, text).sample.float()
    return out, collections.Counter(e.name for e in prof.events())


def test_a_unet_with_fused_norms_matches_diffusers():
    unet = build_tiny_pipeline("sd", seed=0).unet.to(torch.bfloat16).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(unet)
    assert use_fused_group_norm(fused)
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, unet.config.in_channels, 16, 16, generator=g).bfloat16()
    sample = sample.to(memory_format=torch.channels_last)
    text = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g).bfloat16()
    reference, before = _run_counting(unet, sample, text)
    out, after = _run_counting(fused, sample, text)
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())
    resnets = sum(isinstance(m, ResnetBlock2D) for m in unet.modules())
    assert after["mixdiff::group_norm"] == norms and after["aten::group_norm"] == 0
    assert before["aten::silu"] - after["aten::silu"] == 2 * resnets + 1  # each resnet's two, the output's one
    assert _rel(out, reference) < 2e-2


def test_without_the_kernels_the_unet_keeps_atens(monkeypatch):
    def no_compiler():
        raise RuntimeError("Error building extension 'mixdiff_kernels': c++: not found")

    monkeypatch.setattr("kernels.group_norm.load", no_compiler)
    unet = build_tiny_pipeline("sd", seed=0).unet
    assert not use_fused_group_norm(unet)
    assert all("forward" not in vars(m) for m in unet.modules())


def test_the_eager_bf16_variant_runs_the_fused_norms():
    unet = build_tiny_pipeline("sd", seed=0).unet

    def patched(variant):
        """Whether each resnet, and each norm outside one, runs the op (a resnet calls its norms' op itself)."""
        modules = list(variant.unet.modules())
        inside = {id(n) for m in modules if isinstance(m, ResnetBlock2D) for n in (m.norm1, m.norm2)}
        return {
            "forward" in vars(m)
            for m in modules
            if isinstance(m, ResnetBlock2D) or (isinstance(m, torch.nn.GroupNorm) and id(m) not in inside)
        }

    assert patched(EagerUNet(unet, "bf16")) == {True}
    assert patched(EagerUNet(unet, "bf16", fused_group_norm=False)) == {False}
    assert patched(EagerUNet(unet, "fp32")) == {False}
