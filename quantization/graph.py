"""The UNet as a graph: what every quantization method starts from.

``export_unet`` turns a diffusers UNet into the FP32 graph module PT2E's ``prepare_*``
functions take, with the argument list the compiled packages keep
(``UNetGraph``) and its attention as ``mixdiff.int8_attention``.
"""

from __future__ import annotations

import torch

from kernels.attention import FusedAttnProcessor
from quantization.inputs import BATCH, UNetInputs, chunks


class UNetGraph(torch.nn.Module):
    """The UNet as a function of tensors only, the form ``torch.export`` takes.

    Arguments: ``sample, timestep (1-D), encoder_hidden_states`` and, for SDXL,
    ``text_embeds, time_ids``. Module names inside are ``unet.<name>``.
    """

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]


def example_args(example: UNetInputs, batch: int = BATCH) -> tuple[torch.Tensor, ...]:
    """``example``'s arguments cut (or padded) to the ``batch`` the graphs are exported for."""
    return next(chunks(example.args(), batch))[0]


def export_unet(
    unet: torch.nn.Module, example: UNetInputs, batch: int = BATCH, *, int8_attention: bool = True
) -> torch.fx.GraphModule:
    """The FP32 UNet as an exported graph module for a batch of ``batch``, ready for ``prepare_pt2e``; its
    attention is ``mixdiff.int8_attention`` (SDPA in FP32, the fused kernel once autocast makes it BF16),
    or without ``int8_attention`` ``mixdiff.attention``, all BF16."""
    graph = UNetGraph(unet).eval()
    processors = unet.attn_processors
    unet.set_attn_processor(FusedAttnProcessor(int8_attention=int8_attention))  # builds the kernels, or raises why not
    try:
        with torch.no_grad():
            return torch.export.export(graph, example_args(example, batch)).module()
    finally:
        unet.set_attn_processor(processors)


def drop_unused_weights(graph: torch.fx.GraphModule) -> int:
    """Delete the parameters and buffers of ``graph`` that no node reads any more: after
    ``convert_pt2e`` the FP32 weights of every quantized layer, which its INT8 copies replaced
    but which stay attributes (sharing the UNet's storage, so a compile that outlives the UNet
    still holds them: SDXL's are 10 GB). The elements dropped."""
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    dropped = 0
    for name, tensor in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph.get_submodule(owner), attr)
            dropped += tensor.numel()
    return dropped


def drop_tensor_metadata_asserts(graph: torch.fx.GraphModule) -> None:
    """Remove ``aten._assert_tensor_metadata`` nodes: they pin fp32 dtypes that BF16
    autocast changes, so the second export would fail on them."""
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten._assert_tensor_metadata.default:
            graph.graph.erase_node(node)
    graph.recompile()
