"""The PT2E quantizer of mixdiff's INT8 UNets: torchao's ``X86InductorQuantizer``,
its residual additions left unquantized.

By default ``X86InductorQuantizer`` annotates a convolution or linear followed by an
addition as one pattern and quantizes the addition's other input, the residual, to
UINT8 per tensor, so that Inductor can fuse the addition into the oneDNN kernel. In a
UNet that residual is the skip stream of every ResNet and transformer block: rounding
it to 256 levels at each block adds error all the way through, and its dequantized
FP32 copy makes the sum, and the GroupNorms and SiLUs after it, run in FP32 under BF16
autocast. Here those patterns are annotated as plain convolutions and linears: their
inputs and weights are quantized as before, the residual is added in BF16 as the BF16
UNet adds it. On SD 1.5's architecture (random weights) the UNet's error against FP32
falls at the same speed (``bench/int8_residuals.py``; the figures are in
docs/notes/quantization-history.md, "The residual stream in BF16").

Both quantizers here also work on torch before 2.13 (a benchmark host's given torch). On
torch 2.11 ``X86InductorQuantizer`` finds convolutions and linears only by the
``source_fn_stack`` a strict export records, which mixdiff's non-strict exports lack, so
it quantized nothing, silently. Before 2.13 ``mark_module_sources`` records it from each
node's module, as torch 2.13 itself falls back to.
"""

from __future__ import annotations

import importlib

import torch
from torch.torch_version import TorchVersion
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

#: torch's ``get_source_partitions`` falls back on ``nn_module_stack`` from 2.13 on
_FINDS_MODULES_ITSELF = TorchVersion(torch.__version__) >= (2, 13)


def _module_class(path: str) -> type | None:
    """The class ``nn_module_stack`` names by ``path`` (None where it cannot be imported)."""
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None


def mark_module_sources(model: torch.fx.GraphModule) -> None:
    """Record, on every operator of ``model`` without one, the ``source_fn_stack`` a strict export
    gives it: its innermost module's path and class (as torch 2.13 matches it: exactly, so a
    subclass of ``torch.nn.Linear`` is no ``Linear``)."""
    for node in model.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or "source_fn_stack" in node.meta or not stack:
            continue
        path, class_name = list(stack.values())[-1]
        cls = class_name if isinstance(class_name, type) else _module_class(class_name)
        if cls is not None:
            node.meta["source_fn_stack"] = [(path, cls)]


class X86Quantizer(X86InductorQuantizer):
    """``X86InductorQuantizer`` that finds the modules of non-strict exports on any torch."""

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        if not _FINDS_MODULES_ITSELF:
            mark_module_sources(model)
        return super().annotate(model)


class UNetQuantizer(X86Quantizer):
    """``X86Quantizer`` without its conv/linear + add patterns: the residual stays unquantized."""

    def _annotate_conv2d_binary_unary(self, gm, quantization_config, filter_fn=None) -> None:
        """Not annotated: ``_annotate_conv2d`` quantizes the convolution alone."""

    def _annotate_conv2d_binary(self, gm, quantization_config, filter_fn=None) -> None:
        """Not annotated: ``_annotate_conv2d`` quantizes the convolution alone."""

    def _annotate_linear_binary_unary(self, gm, quantization_config, filter_fn=None) -> None:
        """Not annotated: ``_annotate_linear`` quantizes the linear alone."""


def torchao_default() -> X86Quantizer:
    """torchao's own ``X86InductorQuantizer`` and default config, residuals quantized: what benches
    compare against, and the tiny decoder's quantizer."""
    return X86Quantizer().set_global(get_default_x86_inductor_quantization_config())
