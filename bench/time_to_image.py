"""Time to one 512x512 image of a few-step model: what ``mixdiff bench --time-to-image`` runs.

Few-step models (LCM, TCD, SD-Turbo) run at guidance 0 or 1, so a UNet call is batch 1, no
classifier-free guidance batch, and at 1 to 4 steps the text encoder and the decoder weigh as
much as the denoising. So each part of an image is timed on its own, interleaved round after
round with all the others (a neighbour's load falls on all alike), and the time to image is
composed from the medians: text encode + the steps' UNet calls + decode. The scheduler's own
arithmetic (a few elementwise operations on 64x64x4 latents: 0.4 ms a step for ``LCMScheduler``
on 2 cores) and tokenizing (0.2 ms) are left out.

Each architecture has random weights (the arithmetic, and so the time, is the trained model's):
SD 1.5's UNet with CLIP ViT-L/14's text encoder, SD 2.1-base's UNet with OpenCLIP ViT-H's
(23 layers, as SD 2.x runs it), both with SD's VAE decoder ("full") and TAESD's architecture
(``AutoencoderTiny``, "tiny"; "tiny-int8" is it in INT8, calibrated on random latents).
mixdiff's parts run as its server runs them: the text encoder in BF16 eager (and in FP32
besides), the UNet compiled BF16 (``EagerUNet(compile=True)``) or INT8 (PT2E and AOTInductor
as ``mixdiff bench`` builds it, exported, calibrated and compiled at batch 1), the decoders in
BF16 channels-last, the INT8 tiny decoder as ``mixdiff quantize tiny-decoder`` builds it
(``quantization.decoder``) and the server loads it. OpenVINO's (``--peer openvino``) are the
same modules converted by ``openvino.convert_model`` and run with BF16 inference precision,
its INT8 UNet and INT8 tiny decoder NNCF's, all as ``bench.openvino_peer`` builds them. Each
part's error is its relative L2 against the same module in FP32 on the same inputs.
"""

from __future__ import annotations

import copy
import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from bench import openvino_peer, unet_step
from common import malloc
from quantization.decoder import Decode
from quantization.graph import UNetGraph
from quantization.package import required_cpu_features

#: The UNet variants each side runs a step in, by precision.
UNETS = {
    "mixdiff": {"bf16": "bf16-compiled", "int8": "int8-compiled"},
    "openvino": {"bf16": "openvino-bf16", "int8": "openvino-int8"},
}
#: The text encoder and the decoders each side runs, by part.
PARTS = {
    "mixdiff": {
        "text": "text-encoder-bf16",
        "full": "full-vae-bf16",
        "tiny": "tiny-vae-bf16",
        "tiny-int8": "tiny-vae-int8",
    },
    "openvino": {
        "text": "openvino-text-encoder-bf16",
        "full": "openvino-full-vae-bf16",
        "tiny": "openvino-tiny-vae-bf16",
        "tiny-int8": "openvino-tiny-vae-int8",
    },
}
#: Timed besides: whether the tiny decoder is faster in FP32 than in BF16, and the text encoder in FP32.
TINY_FP32 = "tiny-vae-fp32"
TEXT_FP32 = "text-encoder-fp32"
DECODERS = ("full", "tiny", "tiny-int8")
#: Random latents the INT8 tiny decoders are calibrated on (random weights: a trained decoder's are its model's own).
DECODER_CALIBRATION = 8
#: The few-step models' prompt length: every prompt is padded to CLIP's 77 positions.
TOKENS = 77


@dataclass
class Models:
    """One architecture's models, fp32, in eval mode."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    tiny_vae: AutoencoderTiny


def clip_text_encoder(seed: int = 0, **sizes) -> CLIPTextModel:
    """A CLIP text encoder of ``sizes`` (``CLIPTextConfig``'s) with random weights, over CLIP's
    vocabulary and 77 positions."""
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**sizes)).eval()


def sd15_models() -> Models:
    """SD 1.5: its UNet, CLIP ViT-L/14's text encoder, SD's VAE and TAESD."""
    clip_l = clip_text_encoder(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
    return Models(unet_step.sd15_unet(), clip_l, unet_step.sd15_vae(), AutoencoderTiny().eval())


def sd21_models() -> Models:
    """SD 2.1-base: its UNet, OpenCLIP ViT-H's text encoder (the 23 of 24 layers SD 2.x uses), SD's VAE
    and TAESD."""
    open_clip_h = clip_text_encoder(
        hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23, hidden_act="gelu"
    )
    return Models(unet_step.sd21_unet(sample_size=64), open_clip_h, unet_step.sd15_vae(), AutoencoderTiny().eval())


def tiny_models() -> Models:
    """The tiny test pipeline's UNet, text encoder and VAE, and its tiny decoder: a smoke run."""
    from app.pipeline.tiny import build_tiny_pipeline, tiny_decoder

    pipe = build_tiny_pipeline("sd")
    return Models(pipe.unet, pipe.text_encoder, pipe.vae, tiny_decoder(pipe.vae_scale_factor).eval())


#: What ``--archs`` names, and their titles.
ARCHITECTURES: dict[str, Callable[[], Models]] = {"sd15": sd15_models, "sd21": sd21_models, "tiny": tiny_models}
TITLES = {"sd15": "SD 1.5", "sd21": "SD 2.1-base", "tiny": "tiny test pipeline"}


class _Encode(torch.nn.Module):
    """A text encoder as a function of the token ids: its last hidden states, what the UNet attends to."""

    def __init__(self, text_encoder: torch.nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, ids):
        return self.text_encoder(ids)[0]


def _decoder(vae: torch.nn.Module, precision: str, latents: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A copy of ``vae`` configured as the loop configures it (``set_vae_precision``: ``precision``,
    channels-last), as a no-argument callable decoding ``latents``."""
    from app.pipeline.precision import set_vae_precision

    decoder = set_vae_precision(copy.deepcopy(vae), precision)
    return lambda: decoder.decode(latents.to(decoder.dtype)).sample.float()


@dataclass
class _Part:
    """A part of an image as timed: a no-argument call, the FP32 reference its output is compared with
    (``"text"``, ``"unet"``, ``"full"`` or ``"tiny"``) and the seconds building it took."""

    call: Callable[[], torch.Tensor]
    reference: str
    build_seconds: float


def _unet_steps(side: str, unet, inputs, work: Path, label: str) -> dict[str, _Part]:
    """``side``'s UNet variants, one step on ``inputs`` each, built as ``mixdiff bench`` builds them."""
    variants = list(UNETS[side].values())
    unet_step.say(f"building {side}'s UNet variants {', '.join(variants)} (minutes each)", label)
    steps, build = unet_step.build_steps(unet, variants, inputs, work)
    malloc.release()  # the builds' freed memory, before the next one
    return {name: _Part(steps[name], "unet", build[name]["build_seconds"]) for name in variants}


def _mixdiff_text_encoders(models: Models, ids: torch.Tensor) -> dict[str, _Part]:
    """mixdiff's text encoder of ``ids`` as the loop runs it (``set_text_encoder_precision``: BF16,
    cast back to FP32), and in FP32 besides."""
    from app.pipeline.precision import set_text_encoder_precision

    start = time.perf_counter()
    bf16 = _Encode(set_text_encoder_precision(copy.deepcopy(models.text_encoder), "bf16"))
    seconds = time.perf_counter() - start
    fp32 = _Encode(models.text_encoder)
    return {
        PARTS["mixdiff"]["text"]: _Part(lambda: bf16(ids).float(), "text", seconds),
        TEXT_FP32: _Part(lambda: fp32(ids), "text", 0.0),  # as loaded: nothing to build
    }


def _mixdiff_decoders(models: Models, latents: torch.Tensor, calibration, work: Path) -> dict[str, _Part]:
    """mixdiff's decoders of ``latents`` as the loop runs them, the tiny one in FP32 besides, and in
    INT8 as ``mixdiff quantize tiny-decoder`` builds it (on ``calibration`` latents, in ``work``)."""
    from quantization import decoder as int8_decoder
    from quantization.runtime import load_decoder

    vaes = {"full": models.vae, "tiny": models.tiny_vae}
    out = {}
    for name, part, precision in (
        (PARTS["mixdiff"]["full"], "full", "bf16"),
        (PARTS["mixdiff"]["tiny"], "tiny", "bf16"),
        (TINY_FP32, "tiny", "fp32"),
    ):
        start = time.perf_counter()
        call = _decoder(vaes[part], precision, latents)
        out[name] = _Part(call, part, time.perf_counter() - start)
    start = time.perf_counter()
    folder = work / "tiny-int8"
    int8_decoder.build(models.tiny_vae, calibration, folder, source={"latents": "random normal"})
    int8 = load_decoder(folder, models.tiny_vae, "tiny-int8")
    out[PARTS["mixdiff"]["tiny-int8"]] = _Part(lambda: int8.decode(latents)[0], "tiny", time.perf_counter() - start)
    return out


def _openvino_parts(models: Models, ids, latents, calibration, inputs, work: Path, label: str) -> dict[str, _Part]:
    """OpenVINO's text encoder, UNet variants and decoders (its INT8 tiny decoder calibrated on ``calibration``)."""
    unet_step.say("converting the text encoder and the decoders with OpenVINO", label)
    modules = {
        "text": (_Encode(models.text_encoder), ids),
        "full": (Decode(models.vae), latents),
        "tiny": (Decode(models.tiny_vae), latents),
    }
    out = {}
    for part, (module, example) in modules.items():
        call, seconds = openvino_peer.bf16_call(module, (example,))
        out[PARTS["openvino"][part]] = _Part(call, part, seconds)
    call, seconds = openvino_peer.int8_call(Decode(models.tiny_vae), latents, calibration)
    out[PARTS["openvino"]["tiny-int8"]] = _Part(call, "tiny", seconds)
    return {**_unet_steps("openvino", models.unet, inputs, work, label), **out}


def measure(models: Models, *, rounds: int, peer: bool, label: str) -> dict[str, dict]:
    """Each part's median and fastest seconds over ``rounds`` interleaved rounds (after one untimed),
    its relative L2 error against FP32 and its build seconds: the text encoder, UNet variants (one
    step at batch 1) and decoders of mixdiff and, with ``peer``, of OpenVINO. Phases are printed
    under ``label``."""
    unet, size = models.unet, models.unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(models.text_encoder.config.vocab_size, (1, TOKENS), generator=g)
    latents = torch.randn(1, models.vae.config.latent_channels, size, size, generator=g)
    calibration = [torch.randn(latents.shape, generator=g) for _ in range(DECODER_CALIBRATION)]
    inputs = unet_step.random_inputs(unet, 500, seed=100, batch=1)
    with tempfile.TemporaryDirectory(prefix="mixdiff-bench-") as work, torch.no_grad():
        unet_step.say("FP32 references", label)
        references = {
            "text": _Encode(models.text_encoder)(ids),
            "unet": UNetGraph(unet)(*inputs.args()).float(),  # before any variant touches ``unet``
            "full": Decode(models.vae)(latents),
            "tiny": Decode(models.tiny_vae)(latents),
        }
        # the peer first, as ``mixdiff bench`` builds it: its conversion reads the FP32 UNet before
        # mixdiff's variants are built from it, and its calibration's peak comes before theirs is held
        parts = _openvino_parts(models, ids, latents, calibration, inputs, Path(work), label) if peer else {}
        parts = {
            **_mixdiff_text_encoders(models, ids),
            **_unet_steps("mixdiff", unet, inputs, Path(work), label),
            **_mixdiff_decoders(models, latents, calibration, Path(work)),
            **parts,
        }
        unet_step.say(f"timing {len(parts)} parts, {rounds} interleaved rounds after one untimed", label)
        times = unet_step.interleaved({name: part.call for name, part in parts.items()}, rounds)
        errors = {name: unet_step.rel_error(part.call(), references[part.reference]) for name, part in parts.items()}
    return {
        name: {
            "median_seconds": round(statistics.median(times[name]), 4),
            "min_seconds": round(min(times[name]), 4),
            "rel_error_vs_fp32": round(errors[name], 5),
            "build_seconds": round(part.build_seconds, 2),
        }
        for name, part in parts.items()
    }


def schedules(steps: int) -> dict[str, list[str]]:
    """The precision of each UNet step of a ``steps``-step image, by schedule: all BF16, the first and
    last step BF16 with INT8 between (from 3 steps on), all INT8."""
    out = {"bf16": ["bf16"] * steps}
    if steps >= 3:
        out["bf16/int8:1:1"] = ["bf16"] + ["int8"] * (steps - 2) + ["bf16"]
    out["int8"] = ["int8"] * steps
    return out


def compose(median: dict[str, float], step_counts: Sequence[int]) -> list[dict]:
    """The time to image of every (steps, side, schedule, decoder) whose parts ``median`` (seconds by
    part) holds, with its ratio to OpenVINO's row of the same schedule and decoder and to OpenVINO's
    fastest row at that step count, where OpenVINO was measured."""
    rows = []
    for steps in step_counts:
        for side in UNETS:
            parts = {**UNETS[side], **PARTS[side]}
            if any(name not in median for name in parts.values()):
                continue
            for schedule, precisions in schedules(steps).items():
                denoise = sum(median[parts[p]] for p in precisions)
                for decoder in DECODERS:
                    text, decode = median[parts["text"]], median[parts[decoder]]
                    rows.append({
                        "steps": steps, "side": side, "schedule": schedule, "decoder": decoder,
                        "text_seconds": round(text, 3), "denoise_seconds": round(denoise, 3),
                        "decode_seconds": round(decode, 3), "seconds": round(text + denoise + decode, 3),
                    })  # fmt: skip
    peer = {(r["steps"], r["schedule"], r["decoder"]): r["seconds"] for r in rows if r["side"] == "openvino"}
    for row in rows:
        same = peer.get((row["steps"], row["schedule"], row["decoder"]))
        fastest = min((s for (n, *_), s in peer.items() if n == row["steps"]), default=None)
        row["vs_openvino"] = None if same is None else round(row["seconds"] / same, 3)
        row["vs_openvino_fastest"] = None if fastest is None else round(row["seconds"] / fastest, 3)
    return rows


def tiny_vs_full(median: dict[str, float]) -> dict[str, float]:
    """Per side measured, the tiny decoder's time over the full VAE decoder's."""
    return {
        side: round(median[parts["tiny"]] / median[parts["full"]], 3)
        for side, parts in PARTS.items()
        if parts["full"] in median
    }


def _parameter_counts(models: Models) -> dict[str, int]:
    def count(*modules: torch.nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    return {
        "unet": count(models.unet),
        "text_encoder": count(models.text_encoder),
        "full_vae_decoder": count(models.vae.post_quant_conv, models.vae.decoder),
        "tiny_vae_decoder": count(models.tiny_vae.decoder),
    }


def run(archs: Sequence[str], *, step_counts: Sequence[int], rounds: int, peer: bool, command: str) -> dict:
    """Every part of every architecture in ``archs`` (``ARCHITECTURES``' names) timed, and the time to
    image composed from them at each of ``step_counts``. One architecture at a time: its models and
    builds are freed before the next one is built."""
    result = {
        "command": command,
        "batch": 1,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": unet_step.cpu_model(),
        "cpu_features": required_cpu_features(),
        "rounds": rounds,
        "steps": list(step_counts),
        "architectures": {},
    }
    if peer:
        result["peer"] = openvino_peer.versions()
    for arch in archs:
        start = time.perf_counter()
        unet_step.say(f"building the {TITLES[arch]} models (random weights)", arch)
        models = ARCHITECTURES[arch]()
        parts = measure(models, rounds=rounds, peer=peer, label=arch)
        median = {name: p["median_seconds"] for name, p in parts.items()}
        result["architectures"][arch] = {
            "title": TITLES[arch],
            "latent_size": models.unet.config.sample_size,
            "image_size": models.unet.config.sample_size * 2 ** (len(models.vae.config.block_out_channels) - 1),
            "parameters": _parameter_counts(models),
            "parts": parts,
            "tiny_vs_full": tiny_vs_full(median),
            "rows": compose(median, step_counts),
            "seconds": round(time.perf_counter() - start, 1),
        }
        unet_step.say(f"done in {result['architectures'][arch]['seconds']:.0f} s", arch)
        del models
        torch._dynamo.reset()  # drops the compiled BF16 UNet's frozen weights
        gc.collect()
        malloc.release()
    return result


def _millions(n: int) -> str:
    return f"{n / 1e6:.3g} M"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def markdown(result: dict) -> str:
    lines = [
        (
            f"Time to one image, batch 1 (guidance 0/1: no CFG batch), random weights, {result['threads']} threads, "
            f"torch {result['torch']}, {result['cpu']}, median of {result['rounds']} interleaved rounds"
            + (f", OpenVINO {result['peer']['openvino']} (NNCF {result['peer']['nncf']})" if "peer" in result else "")
            + "."
        ),
        "",
        f"`{result['command']}`",
        "",
        "Time to image = text encode + the UNet steps + decode, composed from each part's median; the scheduler's "
        "arithmetic (under a millisecond a step) and tokenizing are left out. mixdiff: text encoder BF16 eager, UNet "
        "compiled BF16 or INT8 (built at batch 1), decoders BF16 channels-last, tiny-int8: the tiny decoder in "
        "INT8 (PT2E, AOTInductor). OpenVINO: the same modules converted, BF16 inference precision, INT8 UNet and "
        "tiny decoder by NNCF. bf16/int8:1:1: the first and last step BF16, "
        "INT8 between. Error: relative L2 against the same module in FP32.",
    ]
    for arch in result["architectures"].values():
        lines += ["", *_arch_markdown(arch)]
    return "\n".join(lines) + "\n"


def _arch_markdown(arch: dict) -> list[str]:
    size, pixels, p = arch["latent_size"], arch["image_size"], arch["parameters"]
    lines = [
        (
            f"## {arch['title']}: {pixels}x{pixels} px ({size}x{size} latents); parameters: UNet "
            f"{_millions(p['unet'])}, text encoder {_millions(p['text_encoder'])}, decoders "
            f"{_millions(p['full_vae_decoder'])} (full) and {_millions(p['tiny_vae_decoder'])} (tiny)"
        ),
        "",
        "| part | seconds (median) | seconds (min) | error vs fp32 | build (s) |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {v['median_seconds']:.3f} | {v['min_seconds']:.3f} | {v['rel_error_vs_fp32']:.1e} "
            f"| {v['build_seconds']:.0f} |"
            for name, v in arch["parts"].items()
        ),
        "",
        "Tiny decoder over the full one: "
        + ", ".join(f"{side} {ratio:.2f}x" for side, ratio in arch["tiny_vs_full"].items())
        + ".",
        "",
        "| steps | side | schedule | decoder | text (s) | denoising (s) | decode (s) | **image (s)** "
        "| vs OpenVINO, same schedule and decoder | vs OpenVINO's fastest |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in arch["rows"]:
        lines.append(
            f"| {r['steps']} | {r['side']} | {r['schedule']} | {r['decoder']} | {r['text_seconds']:.2f} "
            f"| {r['denoise_seconds']:.2f} | {r['decode_seconds']:.2f} | **{r['seconds']:.2f}** "
            f"| {_ratio(r['vs_openvino'])} | {_ratio(r['vs_openvino_fastest'])} |"
        )
    return lines
