"""Post-training static INT8 quantization (``mixdiff quantize ptq``).

torchao's PT2E flow for the x86 Inductor backend: ``prepare_pt2e`` with ``UNetQuantizer``
(``X86InductorQuantizer``, residual additions left unquantized: INT8 per-channel
symmetric weights, UINT8 per-tensor affine activations measured by histogram observers)
→ run the calibration inputs → ``convert_pt2e``. The calibration inputs are the FP32
model's own (``quantization.calibration``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from quantization.graph import drop_tensor_metadata_asserts
from quantization.inputs import BATCH, UNetInputs, run_in_batches
from quantization.package import MARCH

#: How PTQ artifacts are made, recorded in their manifests.
RECIPE = {
    "flow": "pt2e static (torch.export -> prepare_pt2e -> calibrate -> convert_pt2e)",
    "quantizer": "torchao X86InductorQuantizer, default config, residual additions unquantized (bf16)",
    "weights": "int8 per-channel symmetric (PerChannelMinMaxObserver)",
    "activations": "uint8 per-tensor affine, static (HistogramObserver)",
    "unquantized_ops": "bf16 (torch.autocast baked into the exported graph)",
    "attention": (
        "mixdiff.int8_attention (kernels/), from 512 keys: q.k in int8 per token, keys centred; "
        "softmax fp32; p.v in int8, probabilities u8 per block of 64 keys, values per channel, centred"
    ),
    "compiler": f"AOTInductor, freezing (oneDNN int8 conv/linear fusions), {MARCH}, dynamic threads, "
    "optional tensor arguments released after each call (quantization/aoti_codegen.py)",
    "stored_weights": "the package's constants (oneDNN-prepacked int8 weights, scales, bf16 leftovers), "
    "64-byte aligned, as safetensors, handed to the package at load",
}


def make_quantizer(fallback: Sequence[str] = (), only: str | None = None, *, is_qat: bool = False):
    """A ``UNetQuantizer`` (``quantization.quantizer``): everything quantized but the ``fallback`` UNet modules
    (names as in ``unet.named_modules()``), or, with ``only``, that one module alone; ``is_qat``: with
    fake quantization for training (``prepare_qat_pt2e``) instead of observers."""
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    from quantization.quantizer import UNetQuantizer

    config = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    quantizer = UNetQuantizer()
    if only is not None:
        return quantizer.set_module_name_qconfig(f"unet.{only}", config)
    quantizer.set_global(config)
    for name in fallback:
        quantizer.set_module_name_qconfig(f"unet.{name}", None)
    return quantizer


def quantize_graph(
    graph: torch.fx.GraphModule,
    quantizer,
    calibration: Sequence[UNetInputs],
    batch: int = BATCH,
    *,
    in_place: bool = False,
) -> torch.fx.GraphModule:
    """Prepare a copy of ``graph`` (exported for a batch of ``batch``), run the calibration inputs
    through it, convert it. ``in_place``: prepare ``graph`` itself, which is then used up, instead of
    a copy holding a second set of FP32 weights (SDXL's are 10 GB)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise ValueError("no calibration inputs to measure activation ranges on")
    prepared = prepare_pt2e(graph if in_place else copy.deepcopy(graph), quantizer)
    with torch.no_grad():
        for inputs in calibration:
            run_in_batches(prepared, inputs.args(), batch)
    converted = convert_pt2e(prepared)
    drop_tensor_metadata_asserts(converted)
    return converted


@dataclass(frozen=True)
class PTQConfig:
    """Post-training quantization: activation scales from the calibration inputs alone."""

    name: ClassVar[str] = "ptq"
    manifest_method: ClassVar[str] = "ptq-int8-static"
    int8_attention: ClassVar[bool] = True  # the exported graph's attention: both products in INT8

    def recipe(self) -> dict:
        return RECIPE

    def quantize(self, graph: torch.fx.GraphModule, fallback: Sequence[str], calibration, context) -> torch.fx.GraphModule:
        """``graph`` quantized with everything but ``fallback`` in INT8, its scales from ``calibration``."""
        return quantize_graph(graph, make_quantizer(fallback), calibration, context.batch)
