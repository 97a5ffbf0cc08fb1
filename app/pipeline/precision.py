"""The precisions the VAE (or a tiny decoder) decodes in and the text encoders encode in, and
how a module is set to one. Only torch: the benchmarks configure decoders as the loop does
on hosts without the server's packages."""

from __future__ import annotations

import torch

#: What the VAE may decode in, and the text encoders encode in.
MODULE_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _dtype(precision: str, what: str) -> torch.dtype:
    if precision not in MODULE_PRECISIONS:
        raise ValueError(f"unknown {what} precision {precision!r}: {', '.join(MODULE_PRECISIONS)}")
    return MODULE_PRECISIONS[precision]


def set_vae_precision(vae: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``vae`` (or a tiny decoder), converted in place to decode in ``precision``, channels-last:
    oneDNN's native layout for convolutions, the whole of a decoder's work."""
    return vae.to(_dtype(precision, "VAE"), memory_format=torch.channels_last)


def set_text_encoder_precision(encoder: torch.nn.Module, precision: str) -> torch.nn.Module:
    """A text encoder, converted in place to encode in ``precision``. The loop casts what it
    returns back to FP32 (``_encode``), so the UNets see the same dtype either way."""
    return encoder.to(_dtype(precision, "text encoder"))
