"""GroupNorm, and GroupNorm followed by SiLU, as one op (``torch.ops.mixdiff``), and the
patch that runs it in a diffusers UNet.

``mixdiff.group_norm(x, groups, weight, bias, eps, silu)`` is ``F.group_norm`` (then
``F.silu`` with ``silu``). For BF16 channels-last activations on a CPU with AVX-512 BF16 it
runs ``csrc/group_norm.cpp``: split over rows of pixels rather than groups, statistics
and output in two passes, SiLU on the way out; otherwise ATen's ops.

``use_fused_group_norm(unet)`` patches the eager BF16 UNet: in every ``ResnetBlock2D`` the
norm-then-SiLU pairs run as one op, and so does the output norm and activation; every
other ``GroupNorm`` (the transformers' input norms) runs the op without SiLU. A compiled
UNet needs none of it: Inductor fuses these itself.
"""

from __future__ import annotations

import logging
import types

import torch
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from kernels.build import load

log = logging.getLogger(__name__)


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, silu: bool = False) -> torch.Tensor:
    """``norm(x)``, then SiLU with ``silu``, in one op."""
    return torch.ops.mixdiff.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps, silu)


def _norm_forward(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return group_norm(self, x)


def _norm_silu_forward(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return group_norm(self, x, silu=True)


def _resnet_forward(self: ResnetBlock2D, input_tensor: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """``ResnetBlock2D.forward`` (diffusers 0.42, ``time_embedding_norm="default"``, SiLU)
    with each norm and the SiLU after it as one op."""
    hidden_states = group_norm(self.norm1, input_tensor, silu=True)
    if self.upsample is not None:
        if hidden_states.shape[0] >= 64:  # as diffusers: upsample_nearest_nhwc fails on large batches
            input_tensor = input_tensor.contiguous()
            hidden_states = hidden_states.contiguous()
        input_tensor = self.upsample(input_tensor)
        hidden_states = self.upsample(hidden_states)
    elif self.downsample is not None:
        input_tensor = self.downsample(input_tensor)
        hidden_states = self.downsample(hidden_states)
    hidden_states = self.conv1(hidden_states)
    if self.time_emb_proj is not None:
        if not self.skip_time_act:
            temb = self.nonlinearity(temb)
        temb = self.time_emb_proj(temb)[:, :, None, None]
    if temb is not None:
        hidden_states = hidden_states + temb
    hidden_states = group_norm(self.norm2, hidden_states, silu=True)
    hidden_states = self.dropout(hidden_states)
    hidden_states = self.conv2(hidden_states)
    if self.conv_shortcut is not None:
        input_tensor = self.conv_shortcut(input_tensor)
    return (input_tensor + hidden_states) / self.output_scale_factor


def _fusable(block: ResnetBlock2D) -> bool:
    return (
        block.time_embedding_norm == "default"
        and isinstance(block.nonlinearity, nn.SiLU)
        and isinstance(block.norm1, nn.GroupNorm)
        and isinstance(block.norm2, nn.GroupNorm)
    )


def use_fused_group_norm(unet: nn.Module) -> bool:
    """Run ``unet``'s GroupNorms (and the SiLUs after them) as ``mixdiff.group_norm``;
    ``False`` (and a warning, the UNet left as it was) where the kernels cannot be built."""
    try:
        load()
    except (OSError, RuntimeError) as exc:
        log.warning("fused GroupNorm unavailable, the UNet keeps ATen's: %s", exc)
        return False
    fused: set[nn.Module] = set()
    for module in unet.modules():
        if isinstance(module, ResnetBlock2D) and _fusable(module):
            module.forward = types.MethodType(_resnet_forward, module)
            fused.update((module.norm1, module.norm2))
    norm_out, act = getattr(unet, "conv_norm_out", None), getattr(unet, "conv_act", None)
    if isinstance(norm_out, nn.GroupNorm) and isinstance(act, nn.SiLU):
        norm_out.forward = types.MethodType(_norm_silu_forward, norm_out)
        unet.conv_act = nn.Identity()
        fused.add(norm_out)
    for module in unet.modules():
        if isinstance(module, nn.GroupNorm) and module not in fused:
            module.forward = types.MethodType(_norm_forward, module)
    return True
