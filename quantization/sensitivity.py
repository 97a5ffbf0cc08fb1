"""Which parts of the UNet INT8 hurts most: quantize one block at a time and measure.

Each candidate block (a ResNet block, a transformer block, a down/upsampler, the
input/output convolutions, the time embedding) is quantized alone — the rest of the
UNet stays FP32 — calibrated on the calibration inputs, and the UNet's output is
compared with FP32's on held-out inputs. The relative error of that output ranks
the blocks; the worst ones, up to a budget, are kept in BF16 in the real artifact.
Errors are measured in FP32 eager mode, so they are quantization error alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from quantization.inputs import BATCH, UNetInputs, run_in_batches
from quantization.methods.ptq import make_quantizer, quantize_graph

_QUANTIZABLE = (torch.nn.Conv2d, torch.nn.Linear)


@dataclass(frozen=True)
class Sensitivity:
    name: str
    rel_mse: float  # ||unet(x) - fp32(x)||² / ||fp32(x)||² over the held-out inputs


def candidate_blocks(unet: torch.nn.Module) -> list[str]:
    """The UNet's blocks, in forward order, that hold a conv or linear layer."""
    names = []
    for name, child in unet.named_children():
        if name in ("down_blocks", "up_blocks"):
            for i, block in enumerate(child):
                names += _parts(f"{name}.{i}", block)
        elif name == "mid_block" and child is not None:
            names += _parts(name, child)
        elif _has_quantizable(child):
            names.append(name)
    return names


def _parts(prefix: str, block: torch.nn.Module) -> list[str]:
    names = []
    for name, child in block.named_children():
        if isinstance(child, torch.nn.ModuleList):
            names += [f"{prefix}.{name}.{j}" for j, part in enumerate(child) if _has_quantizable(part)]
        elif _has_quantizable(child):
            names.append(f"{prefix}.{name}")
    return names


def _has_quantizable(module: torch.nn.Module | None) -> bool:
    return module is not None and any(isinstance(m, _QUANTIZABLE) for m in module.modules())


def relative_error(
    graph: torch.nn.Module, reference: Sequence[torch.Tensor], inputs: Sequence[UNetInputs], batch: int = BATCH
) -> float:
    """Summed squared error of ``graph`` (for a batch of ``batch``) against ``reference`` outputs over
    summed squared reference."""
    error = norm = 0.0
    with torch.no_grad():
        for ref, item in zip(reference, inputs):
            out = run_in_batches(graph, item.args(), batch)
            error += float(((out - ref) ** 2).sum())
            norm += float((ref**2).sum())
    return error / max(norm, 1e-30)


def scan(
    graph: torch.fx.GraphModule,
    candidates: Sequence[str],
    calibration: Sequence[UNetInputs],
    evaluation: Sequence[UNetInputs],
    on_result=None,
    batch: int = BATCH,
) -> list[Sensitivity]:
    """Quantize each candidate alone; the results, worst first.

    ``graph`` is the exported FP32 UNet (``quantization.graph.export_unet``, for a batch of
    ``batch``); ``on_result`` is called with each ``Sensitivity`` as it is measured (progress
    for a long scan).
    """
    with torch.no_grad():
        reference = [run_in_batches(graph, item.args(), batch) for item in evaluation]
    results = []
    for name in candidates:
        quantized = quantize_graph(graph, make_quantizer(only=name), calibration, batch)
        result = Sensitivity(name, relative_error(quantized, reference, evaluation, batch))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return sorted(results, key=lambda s: s.rel_mse, reverse=True)


def choose_fallback(results: Sequence[Sensitivity], budget: int) -> list[str]:
    """The ``budget`` most sensitive blocks, to keep in BF16."""
    if budget < 0:
        raise ValueError(f"fallback budget must be at least 0, got {budget}")
    return [s.name for s in results[:budget]]
