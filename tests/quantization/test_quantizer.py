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


def _ops(graph: torch.fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op == "call_function":
            counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    return counts


def _partitions(graph: torch.fx.GraphModule) -> dict:
    from torch.fx.passes.utils.source_matcher_utils import get_source_partitions

    found = get_source_partitions(graph.graph, [torch.nn.Conv2d, torch.nn.Linear])
    return {source: [_names(p.nodes, p.input_nodes, p.output_nodes) for p in ps] for source, ps in found.items()}


def _names(*node_lists) -> tuple[list[str], ...]:
    return tuple([node.name for node in nodes] for nodes in node_lists)


class Projection(torch.nn.Linear):
    """A subclass of ``Linear``: torch's partitions match module classes exactly."""


def test_marked_module_sources_are_the_partitions_torch_finds_itself():
    """``mark_module_sources`` (for torch before 2.13, whose partitions need a strict export's
    records) gives what torch 2.13 finds from ``nn_module_stack`` alone."""
    from quantization.quantizer import mark_module_sources

    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3), torch.nn.SiLU(), torch.nn.Flatten(), Projection(8 * 6 * 6, 16), torch.nn.Linear(16, 4)
    ).eval()
    graph = torch.export.export(model, (torch.randn(2, 4, 8, 8),), strict=False).module()
    own = _partitions(graph)
    mark_module_sources(graph)

    assert all("source_fn_stack" in n.meta for n in graph.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert len(own[torch.nn.Linear]) == 1 and len(own[torch.nn.Conv2d]) == 1  # a subclass is no Linear
    assert _partitions(graph) == own


def test_quantizer_marks_modules_where_torch_does_not(tiny_pipe, calibration_split, monkeypatch):
    """On torch before 2.13 the quantizer marks the modules itself, and quantizes the same graph."""
    from quantization import quantizer

    calib, _ = calibration_split
    graph = export_unet(tiny_pipe.unet, calib[0])
    itself = quantize_graph(graph, make_quantizer(), calib)
    monkeypatch.setattr(quantizer, "_FINDS_MODULES_ITSELF", False)
    marked = quantize_graph(graph, make_quantizer(), calib)

    assert _ops(marked) == _ops(itself)
    assert _ops(marked)["quantized_decomposed.dequantize_per_channel.default"] > 0  # weights quantized
