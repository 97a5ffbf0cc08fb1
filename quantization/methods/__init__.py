"""Quantization methods, by name: each turns the FP32 UNet graph into a converted INT8 graph,
or, ``bf16``, leaves it for a BF16 package.

A method is a config dataclass in a module of its own, with

- ``name``: what ``mixdiff quantize <name>`` calls it;
- ``manifest_method``: what its artifacts' manifests record, and how
  ``quantization.runtime.LOADERS`` loads them;
- ``int8_attention``: whether the exported graph's attention computes its products in INT8;
- ``recipe()``: how it quantizes, recorded in every manifest;
- ``quantize(graph, fallback, calibration, context)``: the exported FP32 UNet graph
  (``quantization.graph.export_unet``) quantized with everything but the ``fallback``
  modules, for one timestep group whose calibration inputs are ``calibration``;
  ``context`` (``quantization.build.BuildContext``) holds the FP32 pipeline.

``quantization.build.build_artifact`` runs every method through the same steps (capture,
export, fallback scan, quantize, package, check, manifest, load, fidelity). This module
imports no torch, so a command can list the methods cheaply; ``config_class`` imports one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    module: str  # the module that holds its config
    config: str  # the config class's name there


METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo(
            "ptq",
            "static INT8 post-training quantization, scales calibrated on the model's own denoising runs",
            "quantization.methods.ptq",
            "PTQConfig",
        ),
        MethodInfo(
            "qat",
            "quantization-aware training with knowledge distillation from the FP32 UNet, then static INT8",
            "quantization.methods.qat",
            "QATConfig",
        ),
        MethodInfo(
            "bf16",
            "no INT8: the BF16 UNet compiled ahead of time, as fast as torch.compile and loaded in seconds",
            "quantization.methods.bf16",
            "BF16Config",
        ),
    )
}


def config_class(name: str) -> type:
    """The config class of method ``name``."""
    try:
        info = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown quantization method {name!r}; known: {', '.join(METHODS)}") from None
    return getattr(importlib.import_module(info.module), info.config)
