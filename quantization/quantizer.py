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
"""

from __future__ import annotations

from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)


class UNetQuantizer(X86InductorQuantizer):
    """``X86InductorQuantizer`` without its conv/linear + add patterns: the residual stays unquantized."""

    def _annotate_conv2d_binary_unary(self, gm, quantization_config, filter_fn=None) -> None:
        """Not annotated: ``_annotate_conv2d`` quantizes the convolution alone."""

    def _annotate_conv2d_binary(self, gm, quantization_config, filter_fn=None) -> None:
        """Not annotated: ``_annotate_conv2d`` quantizes the convolution alone."""

    def _annotate_linear_binary_unary(self, gm, quantization_config, filter_fn=None) -> None:
        """Not annotated: ``_annotate_linear`` quantizes the linear alone."""


def torchao_default() -> X86InductorQuantizer:
    """torchao's own ``X86InductorQuantizer``, residuals quantized: what benches compare against."""
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
