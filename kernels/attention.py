"""Fused attention (``torch.ops.mixdiff``) and the diffusers processor that runs it.

``mixdiff.attention(q, k, v, scale)`` is ``scaled_dot_product_attention`` without mask
or dropout, for ``[batch, heads, tokens, head_dim]`` tensors; ``mixdiff.int8_attention``
the same with both products in INT8 where there are 512 keys or more (q·kᵀ SageAttention's
way: keys centred, both sides quantized per token; the probabilities u8 at one scale per
block of 64 keys, the values per channel). In BF16 on a CPU with AVX-512 BF16 and VNNI they run
``csrc/attention.cpp``, otherwise ATen's SDPA. On a CPU with AMX both run a third kernel there,
BF16 with its products in AMX tiles, at the sizes where it beats ATen's flash attention (which
uses AMX tiles too), and ATen's SDPA at the others (``backend()`` tells which kernel runs,
``attention_backend()`` chooses for a while). Both have a fake (meta) rule, so
``torch.compile`` and ``torch.export`` take each as one opaque op (AOTInductor packages
call them by name: the process that loads one must ``load()`` first), an autocast
rule, so under BF16 autocast they get BF16 inputs as SDPA does, and SDPA's backward
(``kernels/ops.py``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from kernels.build import load

log = logging.getLogger(__name__)


def backend() -> str:
    """What the attention ops run for BF16 inputs in this process: ``amx``, ``fused`` or ``aten``."""
    load()
    return torch.ops.mixdiff.attention_backend()


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Run the attention ops with ``name`` inside the block: ``auto`` (the process's default: the
    AMX kernel on CPUs with AMX, the AVX-512 kernels on CPUs with AVX-512 BF16, else SDPA),
    ``amx`` (the same), ``fused`` (the AVX-512 kernels wherever they can run, to measure them on a
    CPU with AMX) or ``aten`` (ATen's SDPA)."""
    load()
    previous = torch.ops.mixdiff.set_attention_backend(name)
    try:
        yield
    finally:
        torch.ops.mixdiff.set_attention_backend(previous)


def _plain(attn: Attention) -> bool:
    """Self- or cross-attention with nothing around the product: SD UNets' transformer blocks."""
    return (
        attn.spatial_norm is None
        and attn.group_norm is None
        and attn.norm_q is None
        and attn.norm_k is None
        and not attn.norm_cross
        and not attn.residual_connection
        and attn.rescale_output_factor == 1.0
    )


class FusedAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` with its SDPA call replaced by ``mixdiff.attention``
    (``mixdiff.int8_attention`` with ``int8_attention``).

    Attention modules with masks, norms or residuals inside keep ``AttnProcessor2_0``.
    """

    def __init__(self, int8_attention: bool = False):
        load()
        self.op = torch.ops.mixdiff.int8_attention if int8_attention else torch.ops.mixdiff.attention
        self.fallback = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if attention_mask is not None or hidden_states.ndim != 3 or not _plain(attn):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        # head_dim ** -0.5, as AttnProcessor2_0's SDPA call uses (it ignores attn.scale).
        out = self.op(query, key, value, head_dim**-0.5)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def use_fused_attention(unet: torch.nn.Module) -> bool:
    """Give every attention module of ``unet`` the fused processor; ``False`` (and a warning,
    the UNet left on SDPA) where the kernels cannot be built, e.g. without a C++ compiler."""
    try:
        processor = FusedAttnProcessor()
    except (OSError, RuntimeError) as exc:
        log.warning("fused attention unavailable, the UNet keeps SDPA: %s", exc)
        return False
    unet.set_attn_processor(processor)
    return True
