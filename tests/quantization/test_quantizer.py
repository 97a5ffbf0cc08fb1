"""The artifacts' quantizer leaves the residual additions unquantized, where torchao's
default quantizes the residual each convolution or linear adds; the stream stays BF16."""

from __future__ import annotations

import pytest
import torch

from quantization.graph import export_unet
from quantization.methods.ptq import make_quantizer, quantize_graph
from quantization.package import export_bf16
from quantization.quantizer import torchao_default

pytestmark = pytest.mark.slow

DEQUANTIZE = torch.ops.quantized_decomposed.dequantize_per_tensor


def _added_dequantized(converted: torch.fx.GraphModule) -> int:
    """Additions with a dequantized input: residuals quantized for a conv/linear + add fusion."""
    return sum(
        1
        for node in converted.graph.nodes
        if node.target == torch.ops.aten.add.Tensor
        and any(isinstance(a, torch.fx.Node) and a.target in (DEQUANTIZE.default, DEQUANTIZE.tensor) for a in node.args)
    )


def _float_dtypes(program: torch.export.ExportedProgram, op) -> set[torch.dtype]:
    return {node.meta["val"].dtype for node in program.graph.nodes if node.target == op}


def test_residuals_stay_unquantized_and_bf16(tiny_pipe, calibration_split):
    calib, _ = calibration_split
    graph = export_unet(tiny_pipe.unet, calib[0])
    ours = quantize_graph(graph, make_quantizer(), calib)
    torchao = quantize_graph(graph, torchao_default(), calib)

    assert _added_dequantized(torchao) > 0  # the pattern this quantizer leaves out exists here
    assert _added_dequantized(ours) == 0
    program = export_bf16(ours, calib[0])
    assert _float_dtypes(program, torch.ops.aten.add.Tensor) == {torch.bfloat16}
    assert _float_dtypes(program, torch.ops.aten.group_norm.default) == {torch.bfloat16}
    # the convolutions and linears themselves are still quantized
    quantized = [n for n in ours.graph.nodes if n.target in (DEQUANTIZE.default, DEQUANTIZE.tensor)]
    assert len(quantized) > 0
