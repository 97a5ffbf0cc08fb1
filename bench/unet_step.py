"""One UNet step at each precision, timed side by side: what ``mixdiff bench`` runs.

The UNet is Stable Diffusion 1.5's, 2.1's or SDXL's architecture with random weights (the
arithmetic, and so the time, is that of the trained model) on its real shapes: a CFG batch
of 2 at the native size (SD 1.5: 64x64 latents, 512x512 px, 77x768 text states; SD 2.1:
96x96, 768x768 px, 77x1024; SDXL: 128x128, 1024x1024 px, 77x2048 and its pooled text
embedding and size conditioning). The variants are timed
interleaved, round after round, so a neighbour's load on the machine falls on all of
them alike; the ratios come from one run. INT8 is built exactly as
``mixdiff quantize ptq`` builds it (PT2E, BF16 for the rest, AOTInductor), calibrated
on random inputs at spread timesteps; ``bf16-aot`` as ``mixdiff quantize bf16`` builds it.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from app.pipeline.variants import EagerUNet
from bench import onednn_summary, openvino_peer
from common import malloc
from kernels import attention
from quantization.graph import UNetGraph, drop_unused_weights, export_unet
from quantization.inputs import UNetInputs
from quantization.methods.bf16 import BF16Config
from quantization.methods.ptq import make_quantizer, quantize_graph
from quantization.package import build_package, required_cpu_features
from quantization.runtime import load_package

#: ``-sdpa``: attention by ATen's SDPA instead of ``kernels``' fused attention, for comparison;
#: ``bf16-aot``: the BF16 package ``mixdiff quantize bf16`` makes (torch.compile's speed, loaded in seconds).
VARIANTS = ("fp32-eager", "bf16-eager", "bf16-compiled", "bf16-compiled-sdpa", "bf16-aot", "int8-compiled")
#: The variants built as AOTInductor packages, from the FP32 UNet.
PACKAGED = ("bf16-aot", "int8-compiled")
#: The BF16 variants that are the server's ``EagerUNet`` (the FP32 one is ``fp32-eager``).
EAGER_BF16 = ("bf16-eager", "bf16-compiled", "bf16-compiled-sdpa")
#: The variant the others are compared with.
BASELINE = "bf16-compiled"


def sd15_unet(seed: int = 0, **changes) -> UNet2DConditionModel:
    """Stable Diffusion 1.5's UNet architecture with random weights; ``changes`` make it another
    SD 1.x/2.x/XL architecture."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        **{
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 2,
            "block_out_channels": (320, 640, 1280, 1280),
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            **changes,
        }
    ).eval()


def sd21_unet(seed: int = 0, sample_size: int = 96) -> UNet2DConditionModel:
    """Stable Diffusion 2.1's UNet architecture with random weights: linear projections, 1024-wide
    text states, heads of 64 channels (diffusers' ``attention_head_dim`` is the head count). At
    ``sample_size`` 96 it is SD 2.1 (768x768 px, v-prediction); at 64, SD 2.1-base and SD-Turbo."""
    return sd15_unet(
        seed,
        sample_size=sample_size,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
    )


def sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """SDXL 1.0 base's UNet architecture with random weights (2.6 B parameters): three levels, no
    attention at the first, 2 and 10 transformer layers at the others, 2048-wide text states (its two
    encoders' concatenated) and the pooled text embedding and size conditioning added to the time
    embedding; 128x128 latents, 1024x1024 px."""
    return sd15_unet(
        seed,
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


#: What ``mixdiff bench --unet`` names: each architecture at its native size.
ARCHITECTURES: dict[str, Callable[[], UNet2DConditionModel]] = {
    "sd15": sd15_unet,
    "sd21": sd21_unet,
    "sdxl": sdxl_unet,
}
TITLES = {"sd15": "SD 1.5", "sd21": "SD 2.1 (768x768)", "sdxl": "SDXL"}


def random_inputs(unet, t: float, seed: int, batch: int = 2) -> UNetInputs:
    """Random latents and text states at timestep ``t``; for SDXL also a random pooled text
    embedding and the size conditioning of an uncropped image at the native size."""
    g = torch.Generator().manual_seed(seed)
    config = unet.config
    size = config.sample_size
    added = ()
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        pixels = float(8 * size)
        added = (
            torch.randn(batch, pooled, generator=g),
            torch.tensor([[pixels, pixels, 0.0, 0.0, pixels, pixels]]).expand(batch, 6).contiguous(),
        )
    return UNetInputs(
        torch.randn(batch, config.in_channels, size, size, generator=g),
        torch.full((batch,), float(t)),
        torch.randn(batch, 77, config.cross_attention_dim, generator=g),
        added,
    )


def calibration_inputs(unet, batch: int = 2) -> list[UNetInputs]:
    """What every INT8 variant of the benchmark is calibrated on, mixdiff's and the peer's:
    random inputs of ``batch`` at six timesteps spread over the schedule."""
    return [random_inputs(unet, t, seed=i, batch=batch) for i, t in enumerate((999, 800, 600, 400, 200, 1))]


def int8_graph(unet, inputs: UNetInputs, quantizer=None) -> torch.fx.GraphModule:
    """``unet`` quantized as ``mixdiff bench`` quantizes it, exported for and calibrated at the batch of
    ``inputs`` (on ``calibration_inputs``), ready for ``build_package``. ``quantizer``: the artifacts' own
    (``ptq.make_quantizer()``) unless given."""
    quantizer = quantizer if quantizer is not None else make_quantizer()
    batch = inputs.batch
    graph = export_unet(unet, inputs, batch)
    return quantize_graph(graph, quantizer, calibration_inputs(unet, batch), batch, in_place=True)


def bf16_graph(unet, inputs: UNetInputs) -> torch.fx.GraphModule:
    """``unet`` as ``mixdiff quantize bf16`` compiles it, exported for the batch of ``inputs``, ready for
    ``build_package``."""
    return BF16Config().quantize(export_unet(unet, inputs, inputs.batch, int8_attention=False), [], [], None)


def build_steps(
    unet, variants, inputs: UNetInputs, work: Path, *, rebuild: Callable[[], UNet2DConditionModel] | None = None
) -> tuple[dict[str, Callable], dict]:
    """A no-argument callable per variant running one step on ``inputs`` (INT8 built for their batch),
    and what building each cost: seconds, and the resident memory it added. FP32 and BF16 are the
    server's own ``EagerUNet`` variants (FP32 is ``unet`` itself). The packages are built first, from
    the FP32 weights; without an FP32 variant, the last BF16 one then converts ``unet`` itself, so the
    FP32 weights are not held beside the BF16 ones (SDXL's are 10 GB). ``rebuild`` (the architecture's
    constructor: the same weights again) lets a package's compilation drop the FP32 weights, which
    with SDXL's do not fit in 23 GB beside it; the float variants then start from a rebuilt UNet."""
    args = inputs.args()
    call_args = args[:3]
    added = inputs.added_cond_kwargs()
    steps: dict[str, Callable] = {}
    build: dict[str, dict] = {}
    peers = [name for name in variants if name in openvino_peer.VARIANTS]
    if peers:
        say(f"building {', '.join(peers)} (OpenVINO converts and NNCF calibrates: minutes)")
        calibration = calibration_inputs(unet, inputs.batch)
        peer_steps, peer_build = openvino_peer.steps(unet, inputs, calibration, peers)
        steps.update(peer_steps)
        build.update(peer_build)
    # packages first, eager variants last: FP32 eager turns ``unet`` itself channels-last, which the
    # others must not inherit
    order = sorted((v for v in variants if v not in peers), key=lambda v: (v.endswith("-eager"), v not in PACKAGED))
    floats = [v for v in order if v in EAGER_BF16]
    for number, name in enumerate(order, 1):
        say(f"building {name} ({number}/{len(order)})")
        start = time.perf_counter()
        resident = rss_bytes()
        if name == "fp32-eager" or name in EAGER_BF16:
            precision, mode = name.split("-")[:2]
            fused = not name.endswith("-sdpa")
            in_place = "fp32-eager" not in variants and name == floats[-1]
            variant = EagerUNet(unet, precision, compile=mode == "compiled", fused_attention=fused, in_place=in_place)
            variant(*call_args, added_cond_kwargs=added)  # the first call compiles
            steps[name] = lambda v=variant: v(*call_args, added_cond_kwargs=added)
        elif name in PACKAGED:
            converted = int8_graph(unet, inputs) if name == "int8-compiled" else bf16_graph(unet, inputs)
            package, weights = work / f"{name}.pt2", work / f"{name}.safetensors"
            if rebuild is not None:
                drop_unused_weights(converted)
                unet.to("meta")  # the weights the converted graph still reads are its own now
                malloc.release()
            build_package(converted, inputs, package, weights, inputs.batch)
            del converted
            if rebuild is not None and name != order[-1]:  # what follows starts from the FP32 weights
                unet = rebuild()
            malloc.release()  # the build's freed memory, before the steps are timed
            built = time.perf_counter()
            runner = load_package(package, weights)
            build[name] = {
                "load_seconds": round(time.perf_counter() - built, 3),
                "bytes": package.stat().st_size + weights.stat().st_size,
            }
            steps[name] = lambda r=runner: r(*args)
        else:
            raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS + openvino_peer.VARIANTS)}")
        malloc.release()
        build.setdefault(name, {}).update(
            build_seconds=round(time.perf_counter() - start, 2),
            rss_added_bytes=rss_bytes() - resident,
            peak_rss_bytes=peak_rss_bytes(),
        )
    return {name: steps[name] for name in variants}, build


def rss_bytes(pid: int | str = "self") -> int:
    """A process's resident bytes, this one's unless ``pid`` (Linux /proc)."""
    return _status_bytes("VmRSS", pid)


def peak_rss_bytes(pid: int | str = "self") -> int:
    """A process's peak resident bytes so far, this one's unless ``pid`` (Linux /proc)."""
    return _status_bytes("VmHWM", pid)


def _status_bytes(key: str, pid: int | str) -> int:
    status = Path(f"/proc/{pid}/status")
    for line in status.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in {status}")


def sd15_vae(seed: int = 0) -> AutoencoderKL:
    """Stable Diffusion 1.5's VAE architecture with random weights."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).eval()


def say(text: str, label: str = "unet step") -> None:
    """A phase of a long benchmark, as it starts (its tables go to files)."""
    print(f"[{label}] {text}", flush=True)


def interleaved(
    steps: dict[str, Callable], rounds: int, warmup: int = 1, *, report: bool = False
) -> dict[str, list[float]]:
    """Seconds of each no-argument ``steps`` callable, run in turn round after round (so the
    machine's drift hits all alike), after ``warmup`` untimed rounds; ``report``: each round's
    end and the time left (``say``)."""
    start = time.perf_counter()
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for done in range(1, rounds + 1):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
        if report:
            per_round = (time.perf_counter() - start) / (warmup + done)
            say(f"timed round {done}/{rounds} (with {warmup} warm-up), about {per_round * (rounds - done):.0f} s left")
    return times


def rel_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative L2 error of ``output`` against ``reference``."""
    return float((output.float() - reference).norm() / reference.norm())


def against_reference(calls: dict[str, Callable], reference: torch.Tensor, rounds: int) -> dict[str, dict]:
    """Per call: its median milliseconds over ``rounds`` interleaved rounds, and the relative
    L2 error of its output against ``reference``."""
    times = interleaved(calls, rounds)
    return {
        name: {
            "ms": 1000 * statistics.median(times[name]),
            "rel_error": rel_error(call(), reference),
        }
        for name, call in calls.items()
    }


def vae_decode(vae, latent_size: int, rounds: int) -> dict:
    """Median seconds of decoding one image's latents in each VAE precision of the loop,
    configured as the loop configures it (channels-last), interleaved round after round."""
    from app.pipeline.precision import MODULE_PRECISIONS, set_vae_precision

    say(f"timing the VAE decode, {rounds} interleaved rounds")
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, vae.config.latent_channels, latent_size, latent_size, generator=g)
    decoders = {name: set_vae_precision(copy.deepcopy(vae), name) for name in MODULE_PRECISIONS}
    with torch.inference_mode():
        times = interleaved(
            {name: lambda d=decoder: d.decode(latents.to(d.dtype)).sample.float() for name, decoder in decoders.items()},
            rounds,
        )
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "latent_size": latent_size,
        "rounds": rounds,
        "precisions": {
            name: {"median_seconds": round(m, 3), "vs_fp32": round(m / median["fp32"], 3)} for name, m in median.items()
        },
    }


def ratio_table(times: dict[str, list[float]], columns: dict[str, dict[str, str]] | None = None) -> str:
    """Markdown: each variant's median step and its ratio to ``BASELINE``'s, plus ``columns``
    (header -> variant -> cell)."""
    columns = columns or {}
    base = statistics.median(times[BASELINE])
    rounds = len(next(iter(times.values())))
    extra = "".join(f" {header} |" for header in columns)
    lines = [
        f"| variant | step (s, median of {rounds}) | vs {BASELINE} |{extra}",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for name, t in times.items():
        cells = "".join(f" {column[name]} |" for column in columns.values())
        lines.append(f"| {name} | {statistics.median(t):.3f} | {statistics.median(t) / base:.2f}x |{cells}")
    return "\n".join(lines)


def time_embedding_share(unet, inputs: UNetInputs, step_seconds: float, rounds: int = 20) -> float:
    """Time of the timestep embedding (sinusoid + MLP) over ``step_seconds``, that of a whole FP32
    step: the most precomputing it per scheduler timestep could save."""
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(rounds):
            unet.time_embedding(unet.time_proj(inputs.timestep))
        return (time.perf_counter() - start) / rounds / step_seconds


def run(unet, *, variants=VARIANTS, rounds: int = 5, warmup: int = 1, rebuild=None, onednn: bool = False) -> dict:
    """Median step seconds of each variant over ``rounds`` interleaved rounds, ratios, each
    variant's relative L2 error against the FP32 UNet's output on the same inputs, and memory:
    what each variant holds resident and the process's peak. ``rebuild``: as ``build_steps`` takes it.
    ``onednn``: then one more step of each of mixdiff's variants with oneDNN's verbose log, its
    time per primitive kind and data type (``onednn_summary.by_kind``)."""
    inputs = random_inputs(unet, 500, seed=100)
    parameters = sum(p.numel() for p in unet.parameters())
    sample_size = unet.config.sample_size
    with tempfile.TemporaryDirectory(prefix="mixdiff-bench-") as work, torch.no_grad():
        start = time.perf_counter()
        reference = UNetGraph(unet)(*inputs.args()).float()  # before any variant touches ``unet``
        embedding_share = time_embedding_share(unet, inputs, time.perf_counter() - start)
        fp32_weights = rss_bytes()
        steps, build = build_steps(unet, variants, inputs, Path(work), rebuild=rebuild)
        say(f"timing {len(steps)} variants, {rounds} interleaved rounds")
        times = interleaved(steps, rounds, warmup, report=True)
        errors = {name: rel_error(step(), reference) for name, step in steps.items()}
        if onednn:
            say("one step of each mixdiff variant with oneDNN's verbose log")
            profiles = {
                name: onednn_summary.by_kind(onednn_summary.record(step))
                for name, step in steps.items()
                if name not in openvino_peer.VARIANTS
            }
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median.get(BASELINE)
    result = {
        "unet": {"parameters": parameters, "sample_size": sample_size},
        "batch": inputs.sample.shape[0],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_features": required_cpu_features(),
        "attention_ops": attention.backend(),
        "rounds": rounds,
        "variants": {
            name: {
                "median_seconds": round(median[name], 4),
                "min_seconds": round(min(times[name]), 4),
                f"vs_{BASELINE}": None if base is None else round(median[name] / base, 3),
                "rel_error_vs_fp32": round(errors[name], 5),
                **build.get(name, {}),
            }
            for name in steps
        },
        "rss_with_fp32_unet_bytes": fp32_weights,
        "peak_rss_bytes": peak_rss_bytes(),
        "time_embedding_share_of_fp32_step": round(embedding_share, 5),
    }
    if any(name in openvino_peer.VARIANTS for name in steps):
        result["peer"] = {**openvino_peer.versions(), **versus_peer(median)}
    if onednn:
        result["onednn_per_step"] = profiles
    return result


#: per precision, mixdiff's candidates (its fastest measured one is compared) and the peer's variant.
PEER_PAIRS = {"bf16": (("bf16-aot", "bf16-compiled"), "openvino-bf16"), "int8": (("int8-compiled",), "openvino-int8")}


def versus_peer(median: dict[str, float], steps: int = 50, k: int = 5) -> dict:
    """mixdiff's steps over the peer's, and the denoising time of a ``steps``-step image for each
    side and schedule (BF16, k BF16 steps at each end with INT8 between, INT8), composed
    from the median steps (the same VAE decode and text encoder are left out of both). Each
    precision's mixdiff side is its fastest variant measured (``mixdiff_variant``)."""
    out: dict = {"mixdiff_variant": {}, "step_ratio": {}, "denoising_seconds": {}}
    sides = {"mixdiff": {}, "openvino": {}}
    for precision, (ours, theirs) in PEER_PAIRS.items():
        measured = [name for name in ours if name in median]
        if measured:
            fastest = min(measured, key=median.__getitem__)
            out["mixdiff_variant"][precision] = fastest
            sides["mixdiff"][precision] = median[fastest]
        if theirs in median:
            sides["openvino"][precision] = median[theirs]
        if measured and theirs in median:
            out["step_ratio"][precision] = round(sides["mixdiff"][precision] / median[theirs], 3)
    for side, step in sides.items():
        if len(step) == 2:
            b, i = step["bf16"], step["int8"]
            out["denoising_seconds"][side] = {
                "bf16": round(steps * b, 2),
                f"bf16/int8:{k}:{k}": round(2 * k * b + (steps - 2 * k) * i, 2),
                "int8": round(steps * i, 2),
            }
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_line() -> str:
    """The CPU, torch and thread count a kernel bench ran on, whether the AVX-512 BF16 kernels
    can run there and what the attention ops run by default (``kernels.load()`` first)."""
    threads, accelerated = torch.get_num_threads(), torch.ops.mixdiff.accelerated()
    return (
        f"{cpu_model()}, torch {torch.__version__}, {threads} threads, AVX-512 BF16 kernels: {accelerated}, "
        f"attention ops: {attention.backend()}"
    )


def markdown(result: dict) -> str:
    gb = 1024**3
    title = TITLES.get(result.get("architecture", ""), "")
    lines = [
        f"{title + ' ' if title else ''}UNet of {result['unet']['parameters'] / 1e6:.0f} M parameters, "
        f"batch {result['batch']}, latents {result['unet']['sample_size']}x{result['unet']['sample_size']}, "
        f"{result['threads']} threads, torch {result['torch']}, {result['cpu']}, "
        + (f"attention ops: {result['attention_ops']}, " if "attention_ops" in result else "")
        + f"median of {result['rounds']} interleaved rounds.",
        "",
        f"| variant | step (s, median) | step (s, min) | vs {BASELINE} | error vs fp32 | build (s) | holds (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        ratio = "" if v[f"vs_{BASELINE}"] is None else f"{v[f'vs_{BASELINE}']:.2f}x"
        holds = f"{v['rss_added_bytes'] / gb:.1f}" if "rss_added_bytes" in v else ""
        lines.append(
            f"| {name} | {v['median_seconds']:.3f} | {v['min_seconds']:.3f} | {ratio} | "
            f"{v['rel_error_vs_fp32']:.1e} | {v['build_seconds']:.0f} | {holds} |"
        )
    if "peak_rss_bytes" in result:
        lines += [
            "",
            f"holds: resident memory the variant added when built (a BF16 variant built in place of the FP32 "
            f"UNet adds less, or frees). The process: {result['rss_with_fp32_unet_bytes'] / gb:.1f} GB with the "
            f"FP32 UNet alone, peak {result['peak_rss_bytes'] / gb:.1f} GB (building).",
        ]
    if "peer" in result:
        lines += ["", *peer_markdown(result["peer"])]
    if "onednn_per_step" in result:
        lines += ["", *onednn_markdown(result["onednn_per_step"], result["variants"])]
    lines += ["", f"Time embedding: {100 * result['time_embedding_share_of_fp32_step']:.3f}% of an FP32 step."]
    if "vae_decode" in result:
        vae = result["vae_decode"]
        size = vae["latent_size"] * 8
        lines += [
            "",
            (
                f"VAE decode of one {size}x{size} image (SD's VAE architecture, random weights, channels-last, "
                f"median of {vae['rounds']} interleaved rounds):"
            ),
            "",
            "| VAE precision | decode (s, median) | vs fp32 |",
            "|---|---|---|",
            *(f"| {name} | {v['median_seconds']:.2f} | {v['vs_fp32']:.2f}x |" for name, v in vae["precisions"].items()),
        ]
    return "\n".join(lines) + "\n"


def onednn_markdown(profiles: dict[str, dict], variants: dict[str, dict]) -> list[str]:
    """One step of each variant as oneDNN's verbose log saw it: milliseconds (calls) per primitive
    kind and source data type, what oneDNN ran in all, and the step's median time unlogged."""
    names = list(profiles)

    def costliest(kind: str) -> float:
        return -max(profile.get(kind, {}).get("ms", 0.0) for profile in profiles.values())

    def cells(values) -> str:
        return " | ".join(values)

    def spent(profile: dict, kind: str) -> str:
        return f"{profile[kind]['ms']:.0f} ({profile[kind]['calls']})" if kind in profile else ""

    kinds = sorted({kind for profile in profiles.values() for kind in profile}, key=costliest)
    rows = [f"| {kind} | {cells(spent(profile, kind) for profile in profiles.values())} |" for kind in kinds]
    logged = (sum(v["ms"] for v in profile.values()) for profile in profiles.values())
    unlogged = (1000 * variants[name]["median_seconds"] for name in names)
    return [
        "oneDNN in one step (`--onednn-profile`: one more step of each variant with oneDNN's verbose log, "
        "which slows every call; ms (calls) per primitive kind and source data type). Convolutions, matmuls "
        "and reorders are each one call that uses every thread; `brgemm` is called by each thread at once "
        "(ATen's flash attention), so its time adds up over the threads:",
        "",
        f"| oneDNN primitive | {cells(names)} |",
        "|---|" + "---|" * len(names),
        *rows,
        f"| all oneDNN (logged, summed as above) | {cells(f'{ms:.0f}' for ms in logged)} |",
        f"| the step, unlogged (median) | {cells(f'{ms:.0f}' for ms in unlogged)} |",
    ]


def peer_markdown(peer: dict) -> list[str]:
    lines = [
        f"Against OpenVINO {peer['openvino']} (NNCF {peer['nncf']}) on the same UNet, inputs and threads "
        "(error: relative L2 against FP32, in the table above):",
        "",
        "| precision | mixdiff variant | mixdiff step / OpenVINO step |",
        "|---|---|---|",
        *(
            f"| {precision} | {peer['mixdiff_variant'][precision]} | {ratio:.2f}x |"
            for precision, ratio in peer["step_ratio"].items()
        ),
    ]
    denoising = peer["denoising_seconds"]
    if denoising:
        schedules = list(next(iter(denoising.values())))
        lines += [
            "",
            "Denoising of a 50-step image, composed from the median steps (seconds; text encoder and VAE left out, "
            "the same on both sides):",
            "",
            "| schedule | " + " | ".join(denoising) + " | mixdiff / OpenVINO | vs mixdiff bf16 |",
            "|---|" + "---|" * (len(denoising) + 2),
        ]
        for schedule in schedules:
            cells = " | ".join(f"{denoising[side][schedule]:.1f}" for side in denoising)
            ours = denoising.get("mixdiff", {})
            theirs = denoising.get("openvino", {})
            ratio = f"{ours[schedule] / theirs[schedule]:.2f}x" if ours and theirs else ""
            own = f"{ours[schedule] / ours['bf16']:.2f}x" if ours else ""
            lines.append(f"| {schedule} | {cells} | {ratio} | {own} |")
    return lines


def write(result: dict, prefix: Path, render=markdown) -> tuple[Path, Path]:
    """``result`` as PREFIX.json and, rendered by ``render``, as PREFIX.md."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md, js = prefix.with_suffix(".md"), prefix.with_suffix(".json")
    md.write_text(render(result))
    js.write_text(json.dumps(result, indent=2) + "\n")
    return md, js
