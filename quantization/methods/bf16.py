"""The BF16 UNet compiled ahead of time (``mixdiff quantize bf16``): nothing is quantized.

``torch.compile`` makes a BF16 UNet faster than eager, but each worker compiles it again at
start-up, for a minute or more, even with Inductor's cache warm. This method compiles it once,
offline, into the same kind of artifact as the INT8 ones: the FP32 graph exported, run under
BF16 autocast, frozen (weights cast and prepacked for oneDNN) and compiled by AOTInductor with
``kernels``' fused attention; the server loads it in a second and offers it under its own
name, beside the eager ``bf16``. Its calibration runs only give the inputs its compiled code
is checked on and its fidelity is measured on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from quantization.graph import drop_tensor_metadata_asserts
from quantization.package import MARCH

#: How BF16 artifacts are made, recorded in their manifests.
RECIPE = {
    "flow": "torch.export of the FP32 UNet, nothing quantized",
    "weights": "bf16 (torch.autocast baked into the exported graph; freezing casts and prepacks them)",
    "activations": "bf16",
    "attention": "mixdiff.attention (kernels/): fused, bf16",
    "compiler": f"AOTInductor, freezing, {MARCH}, dynamic threads",
    "stored_weights": "the package's constants (oneDNN-prepacked bf16 weights), 64-byte aligned, as safetensors",
}


@dataclass(frozen=True)
class BF16Config:
    """The UNet in BF16, compiled ahead of time."""

    name: ClassVar[str] = "bf16"
    manifest_method: ClassVar[str] = "bf16-aot"
    #: the exported graph's attention: all BF16, like the eager and compiled BF16 UNets
    int8_attention: ClassVar[bool] = False

    def recipe(self) -> dict:
        return RECIPE

    def quantize(
        self, graph: torch.fx.GraphModule, fallback: Sequence[str], calibration, context
    ) -> torch.fx.GraphModule:
        """``graph`` as it is (BF16 comes from the autocast every package is compiled under)."""
        if fallback:
            raise ValueError("a bf16 artifact quantizes nothing, so it has no fallback layers: use --fallback none")
        drop_tensor_metadata_asserts(graph)  # they pin the fp32 dtypes that autocast changes
        return graph
