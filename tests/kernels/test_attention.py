"""mixdiff.attention against SDPA: same values, same layout, in eager, compiled and exported graphs."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kernels
import kernels.build
from app.pipeline.tiny import build_tiny_pipeline
from app.pipeline.variants import EagerUNet
from kernels.attention import FusedAttnProcessor, attention_backend, backend, use_fused_attention


@pytest.fixture(scope="module", autouse=True)
def _the_kernels():
    """The kernels themselves, also on a CPU with AMX, where the ops compute SDPA by default."""
    kernels.load()
    with attention_backend("fused"):
        yield


def _qkv(batch, heads, tokens, keys, head_dim, dtype=torch.bfloat16, seed=0):
    """Views of [batch, tokens, heads, head_dim], as diffusers' attention makes them."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, tokens, heads, head_dim, generator=g).transpose(1, 2)
    k, v = (torch.randn(batch, keys, heads, head_dim, generator=g).transpose(1, 2) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _rel(x, ref):
    return float((x.float() - ref).norm() / ref.norm())


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split(":")[1].split()}


def test_the_cpu_picks_the_kernel_amx_with_amx_and_avx512_without():
    flags = _cpu_flags()
    accelerated, amx = {"avx512_bf16", "avx512bw"} <= flags, {"amx_tile", "amx_bf16"} <= flags
    assert torch.ops.mixdiff.accelerated() == accelerated
    kernel = "fused" if accelerated else "aten"
    assert backend() == kernel  # as the fixture chose
    with attention_backend("auto"):
        assert backend() == ("amx" if accelerated and amx else kernel)
    with attention_backend("amx"):  # the fastest kernel the CPU can run
        assert backend() == ("amx" if accelerated and amx else kernel)
    with attention_backend("aten"):
        assert backend() == "aten"
    assert backend() == kernel  # restored


@pytest.mark.parametrize(
    "tokens,keys,head_dim",
    [
        (4096, 4096, 40),  # SD 1.5 at 64x64 latents: in AMX tiles
        (1024, 77, 80),  # cross-attention: in AMX tiles
        (256, 256, 160),  # ATen's SDPA with AMX
        (300, 600, 64),  # two 32-column query tiles held
        (33, 17, 6),  # nothing a multiple of a tile
        (1, 1, 2),
        (9, 100, 3),
        (20, 40, 70),  # query rows in three tiles
    ],
)
def test_the_amx_kernel_matches_sdpa(tokens, keys, head_dim):
    q, k, v = _qkv(2, 3, tokens, keys, head_dim)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    sdpa = F.scaled_dot_product_attention(q, k, v)
    with attention_backend("amx"):  # the AVX-512 kernel where the CPU has no AMX
        out = torch.ops.mixdiff.attention(q, k, v, head_dim**-0.5)
        int8 = torch.ops.mixdiff.int8_attention(q, k, v, head_dim**-0.5)
    assert out.transpose(1, 2).is_contiguous()
    assert _rel(out, reference) <= 1.2 * _rel(sdpa, reference) + 1e-3
    if backend() == "amx":  # with AMX, int8_attention multiplies in BF16 tiles too
        torch.testing.assert_close(int8, out, rtol=0, atol=0)


@pytest.mark.parametrize("op", ["attention", "int8_attention"])
def test_the_aten_backend_is_sdpa(op):
    q, k, v = _qkv(2, 3, 100, 600, 40)
    with attention_backend("aten"):
        out = getattr(torch.ops.mixdiff, op)(q, k, v, 0.3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), rtol=0, atol=0)
    assert out.transpose(1, 2).is_contiguous()  # the layout the kernels write


def test_an_unknown_backend_is_refused():
    with pytest.raises(RuntimeError, match="auto, fused, amx or aten, not tiles"):
        torch.ops.mixdiff.set_attention_backend("tiles")
    assert backend() == ("fused" if torch.ops.mixdiff.accelerated() else "aten")


@pytest.mark.parametrize(
    "tokens,keys,head_dim",
    [
        (4096, 4096, 40),  # SD 1.5 at 64x64 latents
        (1024, 77, 80),  # cross-attention at 32x32
        (256, 256, 160),
        (77, 5, 64),  # SD 2.x / SDXL head size, few keys
        (33, 17, 6),  # nothing a multiple of the kernel's tiles
        (1, 1, 2),
        (9, 40, 3),  # odd head_dim
    ],
)
def test_matches_sdpa(tokens, keys, head_dim):
    q, k, v = _qkv(2, 3, tokens, keys, head_dim)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    sdpa = F.scaled_dot_product_attention(q, k, v)
    out = torch.ops.mixdiff.attention(q, k, v, head_dim**-0.5)
    assert out.shape == sdpa.shape and out.dtype == torch.bfloat16
    # BF16 rounding of the output and of the probabilities: as close to FP32 as SDPA's own BF16 result
    assert _rel(out, reference) <= 1.2 * _rel(sdpa, reference) + 1e-3


@pytest.mark.parametrize(
    "tokens,keys,head_dim",
    [(1024, 1024, 40), (100, 515, 80), (64, 600, 7), (256, 77, 160), (70, 1030, 64), (40, 640, 160)],
)
def test_int8_attention_stays_close_to_fp32(tokens, keys, head_dim):
    q, k, v = _qkv(2, 3, tokens, keys, head_dim)
    k = k + 2.0  # an offset shared by all keys: centring the keys must take it out before quantizing
    v = v + 3.0  # and one shared by all values, which their centring takes out
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    out = torch.ops.mixdiff.int8_attention(q, k, v, head_dim**-0.5)
    bf16 = torch.ops.mixdiff.attention(q, k, v, head_dim**-0.5)
    assert out.transpose(1, 2).is_contiguous()
    assert _rel(out, reference) < 2e-2
    if keys < 512:  # too few keys for INT8 to pay: both products are BF16's
        torch.testing.assert_close(out, bf16, rtol=0, atol=0)
    else:
        assert not torch.equal(out, bf16)


def test_int8_attention_of_a_peaked_softmax():
    """One key far above the rest for each query: INT8 scores must keep it on top."""
    q, k, v = _qkv(1, 2, 64, 1024, 64, dtype=torch.float32)
    k[:, :, :64] = 8 * q  # key i matches query i
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert _rel(torch.ops.mixdiff.int8_attention(q, k, v, 64**-0.5), reference) < 2e-2


def test_int8_probabilities_keep_a_long_tail():
    """Each query's largest probability is 1100 times each of 2047 others, which together
    weigh twice as much as it: at one u8 scale per row (its largest at 255) every one of them
    rounds to zero and the output flips sign; the kernel's scale per block of 64 keys keeps
    all but the 63 that share the largest one's block (2% of the weight here)."""
    keys, head_dim = 2048, 64
    q = torch.zeros(1, 1, 8, head_dim)
    q[..., 0] = 8.0
    k = torch.zeros(1, 1, keys, head_dim)
    k[..., 0] = -7.0  # score -7 / 1 after the 1/8 scale: exp(-7) = 1/1100 of the peak's
    k[:, :, 5, 0] = 0.0  # the peak
    k[..., 1:] = torch.randn(1, 1, keys, head_dim - 1) * 0.01  # keeps every key's int8 scale apart
    v = torch.full((1, 1, keys, head_dim), -1.0)
    v[:, :, 5] = 1.0
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert float(reference[0, 0, 0, 0]) < -0.2  # the tail outweighs the peak
    assert _rel(torch.ops.mixdiff.int8_attention(q, k, v, head_dim**-0.5), reference) < 0.06


def test_scale_is_applied():
    q, k, v = _qkv(1, 2, 64, 64, 16)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.5)
    assert _rel(torch.ops.mixdiff.attention(q, k, v, 0.5), reference) < 1e-2


def test_contiguous_inputs_and_layout_of_the_output():
    q, k, v = (t.contiguous() for t in _qkv(2, 4, 50, 30, 24))
    out = torch.ops.mixdiff.attention(q, k, v, 24**-0.5)
    # [batch, heads, tokens, head_dim] viewing [batch, tokens, heads, head_dim]: the out-projection reads that
    assert out.transpose(1, 2).is_contiguous()
    assert _rel(out, F.scaled_dot_product_attention(q.float(), k.float(), v.float())) < 1e-2


def test_other_dtypes_are_sdpa():
    q, k, v = _qkv(2, 2, 20, 12, 8, dtype=torch.float32)
    out = torch.ops.mixdiff.attention(q, k, v, 8**-0.5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0)
    assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("op", ["attention", "int8_attention"])
def test_fake_and_autocast_rules(op):
    op = getattr(torch.ops.mixdiff, op)
    torch.library.opcheck(op.default, _qkv(1, 2, 24, 600, 8) + (0.3,), test_utils=("test_schema", "test_faketensor"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = op(*_qkv(1, 2, 24, 16, 8, dtype=torch.float32), 0.3)
    assert out.dtype == torch.bfloat16


def test_compiled_graphs_call_the_op_without_a_break():
    q, k, v = _qkv(2, 2, 40, 24, 16)

    def attend(q, k, v):
        return torch.ops.mixdiff.attention(q * 2, k, v, 0.25).transpose(1, 2).reshape(2, 40, 32)

    compiled = torch.compile(attend, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(q, k, v), attend(q, k, v), rtol=0, atol=0)


def test_processor_matches_diffusers_on_a_unet():
    unet = build_tiny_pipeline("sd", seed=0).unet.to(torch.bfloat16)
    fused = copy.deepcopy(unet)
    assert use_fused_attention(fused)
    assert all(isinstance(p, FusedAttnProcessor) for p in fused.attn_processors.values())
    assert torch.ops.mixdiff.attention.default in {p.op.default for p in fused.attn_processors.values()}
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, unet.config.in_channels, 16, 16, generator=g).bfloat16()
    text = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g).bfloat16()
    with torch.no_grad():
        reference = unet(sample, 10, text).sample.float()
        out = fused(sample, 10, text).sample.float()
        graph = torch.export.export(fused, (sample, torch.tensor(10), text)).module()
        exported = graph(sample, torch.tensor(10), text)[0].float()
    assert _rel(out, reference) < 2e-2
    assert any(node.target == torch.ops.mixdiff.attention.default for node in graph.graph.nodes)
    torch.testing.assert_close(exported, out, rtol=0, atol=0)


def test_without_the_kernels_the_unet_keeps_sdpa(monkeypatch):
    def no_compiler():
        raise RuntimeError("Error building extension 'mixdiff_kernels': c++: not found")

    monkeypatch.setattr("kernels.attention.load", no_compiler)
    unet = build_tiny_pipeline("sd", seed=0).unet
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    assert not use_fused_attention(unet)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before


def test_the_bf16_variant_runs_fused_attention_unless_told_not_to():
    unet = build_tiny_pipeline("sd", seed=0).unet

    def ops(variant):
        return {type(p).__name__ for p in variant.unet.attn_processors.values()}

    assert ops(EagerUNet(unet, "bf16")) == {"FusedAttnProcessor"}
    assert ops(EagerUNet(unet, "bf16", fused_attention=False)) == {"AttnProcessor2_0"}
    assert ops(EagerUNet(unet, "fp32")) == {"AttnProcessor2_0"}  # FP32 would be SDPA inside the op anyway


def test_a_build_leaves_only_the_library_in_its_folder():
    """Later processes load it as it is, writing nothing (a read-only image carries it so)."""
    folder = kernels.build.build_dir()
    assert [p.name for p in folder.iterdir()] == ["mixdiff_kernels.so"]
    assert folder.parent == Path(os.environ.get(kernels.build.ENV, Path.home() / ".cache/mixdiff/kernels"))
