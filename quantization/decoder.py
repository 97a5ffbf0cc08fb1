"""An INT8 tiny decoder: a model's ``AutoencoderTiny`` (TAESD-style, ``vae_tiny/``) quantized
by PT2E and compiled ahead of time as UNet artifacts are, calibrated on the FP32 pipeline's
own final latents.

At one to four steps the decode is a large part of an image (docs/FEW_STEPS.md), and a
tiny decoder is convolutions and ReLUs only: ``X86InductorQuantizer``'s defaults (INT8
per-channel weights, UINT8 per-tensor activations) quantize all of it, and the rest (the
output's scaling) runs in BF16, baked in by export under autocast (``quantization.package``).
Its calibration latents are what the decoder will be given: the final latents of the FP32
model's own runs, scaled as the server scales them (a random latent calibrates a random
decoder, not a trained one).

The artifact is ``<model>/vae_tiny/int8/``: ``decoder.pt2`` (the compiled code),
``decoder.safetensors`` (its constants, as ``package.constants_apart`` keeps them) and a
``manifest.json`` with its fidelity against the FP32 decoder on held-out latents. The server
offers it as the decoder ``tiny-int8``; ``quantization.runtime.load_decoder`` loads it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from quantization import package, runtime
from quantization.build import check_agreement, rel_mse, remove_folder, split_holdout
from quantization.graph import drop_tensor_metadata_asserts

log = logging.getLogger(__name__)

#: The artifact's package and its constants, in ``vae_tiny/<runtime.DECODER_ARTIFACT>/``.
PACKAGE, WEIGHTS = "decoder.pt2", "decoder.safetensors"
METHOD = "ptq-int8-static"
RECIPE = {
    "flow": "pt2e static (torch.export -> prepare_pt2e -> calibrate -> convert_pt2e)",
    "quantizer": "torchao X86InductorQuantizer, default config",
    "weights": "int8 per-channel symmetric (PerChannelMinMaxObserver)",
    "activations": "uint8 per-tensor affine, static (HistogramObserver)",
    "unquantized_ops": "bf16 (torch.autocast baked into the exported graph)",
    "calibration": "the FP32 pipeline's own final latents, scaled as the decoder takes them",
    "compiler": f"AOTInductor, freezing (oneDNN int8 conv fusions), {package.MARCH}, dynamic threads",
    "stored_weights": "the package's constants (oneDNN-prepacked int8 weights, scales), 64-byte aligned, as "
    "safetensors, handed to the package at load",
}


class Decode(torch.nn.Module):
    """A decoder (a VAE, a tiny decoder) as a function of its latents: what is exported."""

    def __init__(self, decoder: torch.nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, latents):
        return self.decoder.decode(latents, return_dict=False)[0]


class _BF16(torch.nn.Module):
    """The converted decoder under BF16 autocast, its output fp32: export records the casts."""

    def __init__(self, graph: torch.nn.Module):
        super().__init__()
        self.quantized = graph

    def forward(self, latents):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.quantized(latents).float()


@torch.no_grad()
def final_latents(pipe, decoder, prompts: Sequence[str], *, steps: int, guidance_scale: float, seed: int = 0):
    """The FP32 ``pipe``'s final latents for ``prompts`` (seed ``seed + i`` each), scaled as the server
    hands them to ``decoder`` (``runtime.decoder_input``); one tensor of batch 1 each."""
    latents = []
    for i, prompt in enumerate(prompts):
        out = pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed + i),
            output_type="latent",
        ).images
        latents.append(runtime.decoder_input(out, decoder.config).float())
    return latents


def quantize(decoder: torch.nn.Module, calibration: Sequence[torch.Tensor]) -> torch.fx.GraphModule:
    """``decoder`` exported for one latent of the calibration latents' size, quantized, its scales from them."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from quantization.quantizer import torchao_default

    quantizer = torchao_default()
    with torch.no_grad():
        graph = torch.export.export(Decode(decoder.eval()), (calibration[0],)).module()
        prepared = prepare_pt2e(graph, quantizer)
        for latents in calibration:
            prepared(latents)
    converted = convert_pt2e(prepared)
    drop_tensor_metadata_asserts(converted)
    return converted


def compile_package(converted: torch.fx.GraphModule, example: torch.Tensor, folder: Path) -> None:
    """``converted`` under BF16 autocast, compiled by AOTInductor (``package.compile_program``, as UNet
    packages are) into ``folder``'s package and constants."""
    with torch.no_grad():
        program = torch.export.export(_BF16(converted), (example,)).run_decompositions({})
    with package.constants_apart(folder / PACKAGE, folder / WEIGHTS), runtime.portable_isa():
        package.compile_program(program, str(folder / PACKAGE))


def _psnr(got: torch.Tensor, want: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1], as the server turns them into 8-bit pixels."""
    mse = float(((got.clamp(-1, 1) - want.clamp(-1, 1)) * 127.5).round().pow(2).mean())
    return 99.0 if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()


def fidelity(variant, decoder: torch.nn.Module, latents: Sequence[torch.Tensor]) -> dict:
    """The artifact ``variant``'s decoded images against the FP32 ``decoder``'s on ``latents``, and the
    BF16 decoder's (what ``tiny`` serves) for comparison."""
    bf16 = copy.deepcopy(decoder).to(torch.bfloat16)
    rows = {"int8": [], "bf16": []}
    with torch.no_grad():
        for x in latents:
            want = decoder.decode(x, return_dict=False)[0]
            rows["int8"].append((variant.decode(x)[0], want))
            rows["bf16"].append((bf16.decode(x.to(torch.bfloat16), return_dict=False)[0].float(), want))
    out = {"reference": "fp32 tiny decoder", "held_out_latents": len(latents)}
    for name, pairs in rows.items():
        out[f"{name}_rel_mse"] = rel_mse(pairs)
        out[f"{name}_psnr_db_mean"] = sum(_psnr(g, w) for g, w in pairs) / len(pairs)
        out[f"{name}_psnr_db_min"] = min(_psnr(g, w) for g, w in pairs)
    return out


def build(decoder: torch.nn.Module, latents: list[torch.Tensor], out: Path, *, source: dict, holdout_every: int = 4):
    """Quantize ``decoder`` on ``latents`` (every ``holdout_every``-th held out to measure fidelity) into the
    artifact folder ``out`` (created; must not exist); its manifest. ``source`` says where the latents came from."""
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it first")
    calib, held_out = split_holdout(latents, holdout_every)
    seconds = {}
    start = time.perf_counter()
    converted = quantize(decoder, calib)
    seconds["quantize"] = time.perf_counter() - start
    out.mkdir(parents=True)
    try:
        start = time.perf_counter()
        compile_package(converted, calib[0], out)
        seconds["compile"] = time.perf_counter() - start
        runner = runtime.load_package(out / PACKAGE, out / WEIGHTS)
        with torch.no_grad():
            checks = [(runner(x), _BF16(converted)(x)) for x in calib[:4]]
        agreement = check_agreement(checks, "decoder")
        latent, image = list(calib[0].shape[2:]), list(checks[0][1].shape[2:])
        manifest = {
            "name": runtime.DECODER_ARTIFACT,
            "module": "vae_tiny",
            "method": METHOD,
            "recipe": RECIPE,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "calibration": {**source, "latents": len(calib), "held_out": len(held_out)},
            "package": {"file": PACKAGE, "weights": WEIGHTS, "compiled_vs_eager_rel_mse": agreement},
            "model": {
                "decoder_fingerprint": runtime.fingerprint(decoder),
                "decoder_class": type(decoder).__name__,
                "latent_size": latent,
                "image_size": image,
                "compiled_batch": 1,
            },
            "runtime": package.runtime_record(),
            "build_seconds": {k: round(v, 2) for k, v in seconds.items()},
        }
        package.write_manifest(out, manifest)
        variant = runtime.load_decoder(out, decoder, "tiny-int8")
        manifest["fidelity"] = fidelity(variant, decoder, held_out)
        manifest["artifact_bytes"] = sum(p.stat().st_size for p in (out / PACKAGE, out / WEIGHTS))
        log.info("fidelity on %d held-out latents: %s", len(held_out), manifest["fidelity"])
        return package.write_manifest(out, manifest)
    except BaseException:
        remove_folder(out)
        raise
