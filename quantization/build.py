"""From a pipeline to an artifact folder, the same steps for every method: capture the
model's own UNet inputs, export, scan for fallback layers, quantize (the method's step),
compile and check, write the manifest, load it as the server will and measure its fidelity.

``build_artifact`` is what ``mixdiff quantize <method>`` runs. Every step's cost goes in
the manifest next to what it made, so the memory and start-up price of several
timestep groups, a sensitivity scan or a training run is on record with the artifact.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch

from quantization import calibration, package, runtime, sensitivity
from quantization.graph import UNetGraph, export_unet
from quantization.inputs import BATCH, TimestepGroups, UNetInputs, run_in_batches

log = logging.getLogger(__name__)

#: Largest relative MSE between a compiled package and its eager reference that a build
#: accepts. Rounding alone gives 1e-4..1e-3; the miscompilations seen gave 0.3..0.5.
COMPILE_TOLERANCE = 2e-2


@dataclass(frozen=True)
class BuildContext:
    """What a method's ``quantize`` may use beside its graph and calibration inputs."""

    pipe: object  # the FP32 diffusers pipeline; ``pipe.unet`` is the UNet being quantized
    timestep_groups: int  # packages, each with the activation scales of its range of timesteps
    batch: int = BATCH  # the graph's batch: the calibration runs', 2 with guidance, 1 without


@dataclass(frozen=True)
class BuildOptions:
    sampler: str = "trajectory"
    samples: int = 8  # per prompt, for the uniform and normal samplers
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    fallback: str = "none"  # "auto", "none", or comma-separated UNet module names kept in BF16
    fallback_budget: int = 3  # blocks the automatic scan may keep in BF16
    timestep_groups: int = 1
    holdout_every: int = 8  # every n-th captured input is kept out of calibration, to measure fidelity
    fidelity_inputs: int = 32  # held-out inputs the fidelity is measured on, at most
    scan_inputs: int = 16  # calibration inputs per candidate in the sensitivity scan (it quantizes once per block)
    compile_check_inputs: int = 4  # calibration inputs the compiled package is checked against its eager reference on


def split_holdout(inputs: list[UNetInputs], every: int) -> tuple[list[UNetInputs], list[UNetInputs]]:
    """``(calibration, held_out)``: every ``every``-th input held out, at least one, when there are two or more."""
    if len(inputs) < 2:
        raise ValueError(f"calibration captured {len(inputs)} input(s); use more prompts or samples")
    held = set(range(every - 1, len(inputs), every)) or {len(inputs) - 1}
    return [x for i, x in enumerate(inputs) if i not in held], [x for i, x in enumerate(inputs) if i in held]


def _strided(items: list, n: int) -> list:
    """At most ``n`` items spread over the whole list (so over all timesteps)."""
    step = max(1, len(items) // n)
    return items[::step][:n]


def fidelity(variant, unet: torch.nn.Module, inputs: list[UNetInputs]) -> dict:
    """Output error of ``variant`` against the FP32 UNet on ``inputs``."""
    error = norm = 0.0
    cosines = []
    with torch.no_grad():
        for item in inputs:
            ref = UNetGraph(unet)(*item.args())
            out = variant(item.sample, item.timestep, item.encoder_hidden_states, item.added_cond_kwargs())
            error += float(((out - ref) ** 2).sum())
            norm += float((ref**2).sum())
            cosines.append(float(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)))
    return {
        "reference": "fp32 eager UNet",
        "held_out_inputs": len(inputs),
        "rel_mse": error / max(norm, 1e-30),
        "cos_sim_mean": sum(cosines) / len(cosines),
        "cos_sim_min": min(cosines),
    }


class MiscompiledError(ValueError):
    """The compiled package computes something else than the quantized graph it was compiled from."""


def rel_mse(pairs) -> float:
    """Relative MSE over ``(got, want)`` tensor pairs: the summed squared error over the summed
    squared reference."""
    error = norm = 0.0
    for got, want in pairs:
        error += float(((got - want) ** 2).sum())
        norm += float((want**2).sum())
    return error / max(norm, 1e-30)


def check_agreement(pairs, what: str, hint: str = "") -> float:
    """Relative MSE of a compiled package's outputs against its converted graph's, over ``(got, want)``
    pairs; ``MiscompiledError`` (naming ``what``, then ``hint``) above ``COMPILE_TOLERANCE``."""
    agreement = rel_mse(pairs)
    if not agreement <= COMPILE_TOLERANCE:
        raise MiscompiledError(
            f"the compiled {what} disagrees with the quantized graph it was compiled from (relative MSE "
            f"{agreement:.2e} > {COMPILE_TOLERANCE:.0e}){hint}"
        )
    return agreement


def check_compiled(
    converted: torch.fx.GraphModule, package_path: Path, weights: Path, inputs: list[UNetInputs], batch: int = BATCH
) -> float:
    """Relative MSE of the compiled package against the converted graph run eagerly (BF16
    for the rest, as the package runs it) on ``inputs``; ``MiscompiledError`` above
    ``COMPILE_TOLERANCE``. Both use the same INT8 weights and scales, so they differ by
    rounding only, unless Inductor's fusion passes got the graph wrong."""
    runner = runtime.load_package(package_path, weights)
    with torch.no_grad():
        pairs = (
            (run_in_batches(runner, item.args(), batch), package.run_bf16(converted, item, batch)) for item in inputs
        )
        return check_agreement(
            pairs,
            "UNet",
            ": Inductor fused it wrongly; some sets of fallback layers cause this (docs/QUANTIZATION.md), "
            "so try other ones",
        )


def _manual_fallback(unet: torch.nn.Module, fallback: str) -> list[str]:
    """The module names of a manual ``fallback`` list, checked before any work is done."""
    if fallback in ("auto", "none"):
        return []
    names = [name.strip() for name in fallback.split(",") if name.strip()]
    known = dict(unet.named_modules())
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"no UNet module named {', '.join(unknown)}; names are as in unet.named_modules()")
    return names


def fallback_attempts(fallback: list[str], *, auto: bool) -> list[list[str]]:
    """The sets of BF16 blocks to build with, in turn, while the compile check refuses them: the
    chosen set; for a scan's choice (``auto``) then each set with one block fewer, the least
    sensitive left out first (the scan lists them most sensitive first). A manual list is kept."""
    if not auto:
        return [fallback]
    return [fallback] + [fallback[:i] + fallback[i + 1 :] for i in reversed(range(len(fallback)))]


def _compile_groups(
    method, context: BuildContext, graph, fallback: list[str], per_group, groups, out: Path, options: BuildOptions
) -> list[dict]:
    """Quantize (by ``method``), compile and check one package per timestep group into ``out``;
    their manifest records."""
    group_records = []
    for g, items in enumerate(per_group):
        start = time.perf_counter()
        converted = method.quantize(graph, fallback, items, context)
        quantize_s = time.perf_counter() - start
        start = time.perf_counter()
        package_path, weights = out / package.package_name(g), out / package.weights_name(g)
        package.build_package(converted, items[0], package_path, weights, context.batch)
        compile_s = time.perf_counter() - start
        agreement = check_compiled(
            converted, package_path, weights, _strided(items, options.compile_check_inputs), context.batch
        )
        log.info(
            "group %d: quantized in %.0f s, compiled in %.0f s; compiled vs eager rel. MSE %.1e",
            g, quantize_s, compile_s, agreement,
        )  # fmt: skip
        group_records.append(
            {
                "t_min": groups.bounds[g],
                "t_max": groups.bounds[g + 1],
                "file": package_path.name,
                "weights": weights.name,
                "calibration_inputs": len(items),
                "bytes": package_path.stat().st_size + weights.stat().st_size,
                "quantize_seconds": round(quantize_s, 2),
                "compile_seconds": round(compile_s, 2),
                "compiled_vs_eager_rel_mse": agreement,
            }
        )
        del converted
    return group_records


def build_artifact(method, pipe, prompts: list[str], out: Path, options: BuildOptions) -> dict:
    """Quantize ``pipe.unet`` by ``method`` (a config of ``quantization.methods``) into the
    artifact folder ``out`` (created; must not exist), calibrated on the FP32 model's own
    denoising runs of ``prompts``; its manifest."""
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another --out name")
    _manual_fallback(pipe.unet, options.fallback)  # a typo fails now, not after calibration
    start = time.perf_counter()
    captured = calibration.capture(
        pipe,
        prompts,
        sampler=options.sampler,
        samples=options.samples,
        steps=options.steps,
        guidance_scale=options.guidance_scale,
        seed=options.seed,
    )
    seconds = time.perf_counter() - start
    log.info("captured %d UNet inputs in %.0f s", len(captured), seconds)
    source = {"prompts": len(prompts), "prompt_examples": prompts[:3], "scheduler": type(pipe.scheduler).__name__}
    return build_from_inputs(method, pipe, captured, out, options, source=source, calibration_seconds=seconds)


def build_from_inputs(
    method,
    pipe,
    captured: list[UNetInputs],
    out: Path,
    options: BuildOptions,
    *,
    source: dict,
    calibration_seconds: float = 0.0,
) -> dict:
    """Quantize ``pipe.unet`` by ``method`` into ``out`` calibrated on ``captured`` UNet inputs (every
    ``options.holdout_every``-th held out to measure fidelity); ``source`` says in the
    manifest where the inputs came from. Its manifest."""
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another --out name")
    unet = pipe.unet.eval()
    manual = _manual_fallback(unet, options.fallback)
    seconds: dict[str, float] = {"calibration": calibration_seconds}

    # 1. calibration inputs, and the held-out ones fidelity is measured on
    calib, held_out = split_holdout(captured, options.holdout_every)
    # a model sampled without guidance is called with one latent, not a pair: its graph takes one
    context = BuildContext(pipe, options.timestep_groups, batch=calib[0].batch)

    # 2. the FP32 graph every quantization starts from
    start = time.perf_counter()
    graph = export_unet(unet, calib[0], context.batch, int8_attention=method.int8_attention)
    seconds["export"] = time.perf_counter() - start

    # 3. fallback layers: none, the given ones, or the worst of a one-block-at-a-time scan
    scan_results, fallback = None, manual
    if options.fallback == "auto":
        start = time.perf_counter()
        candidates = sensitivity.candidate_blocks(unet)
        log.info("sensitivity scan over %d blocks", len(candidates))
        scan_results = sensitivity.scan(
            graph,
            candidates,
            _strided(calib, options.scan_inputs),
            _strided(held_out, max(2, options.scan_inputs // 4)),
            on_result=lambda s: log.info("  %-40s rel_mse %.3e", s.name, s.rel_mse),
            batch=context.batch,
        )
        fallback = sensitivity.choose_fallback(scan_results, options.fallback_budget)
        seconds["sensitivity_scan"] = time.perf_counter() - start
    log.info("kept in BF16: %s", ", ".join(fallback) or "nothing")

    # 4. one quantized, compiled UNet per timestep group
    groups = TimestepGroups.even(options.timestep_groups, pipe.scheduler.config.num_train_timesteps)
    per_group = groups.split(calib)
    empty = [g for g, items in enumerate(per_group) if not items]
    if empty:
        raise ValueError(
            f"timestep group(s) {empty} of {len(groups)} got no calibration input; "
            "use fewer groups, more samples, or the trajectory sampler"
        )
    out.mkdir(parents=True)
    try:
        # Inductor miscompiles some sets of BF16 blocks among INT8 ones (docs/QUANTIZATION.md): a set
        # the scan chose that fails the compile check is retried with one block fewer.
        attempts = fallback_attempts(fallback, auto=options.fallback == "auto")
        for n, attempt in enumerate(attempts):
            try:
                group_records = _compile_groups(method, context, graph, attempt, per_group, groups, out, options)
                break
            except MiscompiledError as exc:
                if n + 1 == len(attempts):
                    raise
                log.warning("%s; trying %s in BF16 instead", exc, ", ".join(attempts[n + 1]) or "nothing")
                remove_folder(out)
                out.mkdir(parents=True)
        miscompiled, fallback = attempts[:n], attempts[n]
        if miscompiled:
            log.info("kept in BF16: %s", ", ".join(fallback) or "nothing")

        latent = calib[0].sample.shape[2:]
        manifest = {
            "name": out.name,
            "method": method.manifest_method,
            "recipe": method.recipe(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "calibration": {
                **{k: v for k, v in asdict(options).items() if k not in ("fallback", "fallback_budget")},
                **source,
                "inputs": len(calib),
                "held_out": len(held_out),
                "timesteps": sorted({round(x.t, 2) for x in calib}),
            },
            "fallback": {
                "mode": options.fallback if options.fallback in ("auto", "none") else "manual",
                "budget": options.fallback_budget if options.fallback == "auto" else None,
                "layers": fallback,
                "miscompiled": miscompiled,
                "scan": None if scan_results is None else [asdict(s) for s in scan_results],
            },
            "timestep_groups": group_records,
            "model": {
                "unet_fingerprint": runtime.fingerprint(unet),
                "unet_class": type(unet).__name__,
                "latent_size": list(latent),
                "image_size": [s * pipe.vae_scale_factor for s in latent],
                "compiled_batch": context.batch,
                "inputs": ["sample", "timestep", "encoder_hidden_states"]
                + (["text_embeds", "time_ids"] if calib[0].added else []),
            },
            "runtime": package.runtime_record(),
            "build_seconds": {k: round(v, 2) for k, v in seconds.items()},
        }
        manifest = package.write_manifest(out, manifest)

        # 5. fidelity of the artifact as the server will load it
        rss = psutil.Process().memory_info().rss
        start = time.perf_counter()
        variant = runtime.load_variant(out, pipe)
        manifest["load_seconds"] = round(time.perf_counter() - start, 3)
        manifest["load_rss_bytes"] = psutil.Process().memory_info().rss - rss
        manifest["fidelity"] = fidelity(variant, unet, _strided(held_out, options.fidelity_inputs))
        manifest["artifact_bytes"] = sum(g["bytes"] for g in group_records)
        log.info("fidelity on held-out inputs: %s", manifest["fidelity"])
        return package.write_manifest(out, manifest)
    except BaseException:
        remove_folder(out)
        raise


def remove_folder(folder: Path) -> None:
    """Remove a half-built artifact folder (files only), so no server ever sees it."""
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()

