"""The Python-side rules of the ``torch.ops.mixdiff`` ops, registered once the library is
loaded (``kernels.build.load``): fake (meta) rules, so ``torch.compile`` and
``torch.export`` take each op whole; autocast rules, so under BF16 autocast the
attention ops get BF16 inputs as SDPA does; and the attention ops' backward, SDPA's
recomputed, so quantization-aware training can run the graphs that hold them (in FP32,
where they compute SDPA).
"""

from __future__ import annotations

import torch

#: The attention ops: ``op(q, k, v, scale)``, SDPA without mask or dropout.
ATTENTION_OPS = ("attention", "int8_attention")


def _attention_fake(q, k, v, scale):
    return q.new_empty((q.shape[0], q.shape[2], q.shape[1], v.shape[3])).transpose(1, 2)


def _attention_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.scale = inputs[3]


def _attention_backward(ctx, grad):
    inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
    with torch.enable_grad():
        out = torch.nn.functional.scaled_dot_product_attention(*inputs, scale=ctx.scale)
    return (*torch.autograd.grad(out, inputs, grad), None)


def _group_norm_fake(x, groups, weight, bias, eps, silu):
    return torch.empty_like(x)


def register_rules() -> None:
    for name in ATTENTION_OPS:
        torch.library.register_fake(f"mixdiff::{name}", _attention_fake)
        torch.library.register_autocast(f"mixdiff::{name}", "cpu", torch.bfloat16)
        torch.library.register_autograd(
            f"mixdiff::{name}", _attention_backward, setup_context=_attention_setup_context
        )
    torch.library.register_fake("mixdiff::group_norm", _group_norm_fake)
