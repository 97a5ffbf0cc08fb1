"""The service end to end on SD 1.5's architecture: what ``mixdiff bench --service`` runs.

A Stable Diffusion 1.5 pipeline with random weights (its UNet and VAE, a CLIP-L-sized
text encoder over a small vocabulary: the arithmetic of a step, a decode and a
start-up are those of the real model) is saved as a model folder with an INT8
artifact built the way ``mixdiff quantize ptq`` builds one (calibrated on random
UNet inputs at spread timesteps: the weights are random, there is no trajectory
worth following) and a BF16 one built as ``mixdiff quantize bf16`` builds it. Then
``mixdiff serve`` is started on it with one worker on all the cores, once per way of
running BF16 (``BF16_MODES``: eager, ``--compile``, the ahead-of-time artifact), and
the benchmark records how long the worker takes to get ready and how much memory it
holds, and times 50-step 512x512 generations over HTTP, every schedule in each round,
in turn, with each precision's mean step from the steps the server reports. The folder is
kept in ``work`` and reused.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from transformers import CLIPTextModel

from app.pipeline.tiny import (
    build_tiny_pipeline,
    clip_text_config,
    clip_tokenizer,
    sd_scheduler,
)
from bench import unet_step
from common import malloc
from quantization.build import BuildOptions, build_from_inputs
from quantization.methods.bf16 import BF16Config
from quantization.methods.ptq import PTQConfig
from quantization.runtime import ArtifactError, verify


def schedules(bf16: str) -> dict:
    """The schedules every round generates, by label, with ``bf16`` the BF16 UNet's precision name."""
    return {
        "bf16": bf16,
        "bf16/int8 k=5": {"high": bf16, "low": "int8", "first": 5, "last": 5},
        "int8": "int8",
    }


#: The ways a server can run BF16, by name: (the precision it is offered as, --compile), and how
#: the tables say it.
BF16_MODES = {
    "eager": ("bf16", False, "bf16 eager"),
    "compiled": ("bf16", True, "bf16 compiled"),
    "aot": ("bf16-aot", False, "bf16 artifact"),
}
#: The artifacts of the model folder, by name: the method that makes each.
ARTIFACTS = {"int8": PTQConfig(), "bf16-aot": BF16Config()}
#: The schedule the others are compared with.
BASELINE = "bf16"
_TIMESTEPS = (999, 900, 700, 500, 400, 300, 100, 1)  # calibration inputs; every 4th is held out
_OPTIONS = BuildOptions(sampler="random", holdout_every=4, fidelity_inputs=2)


def sd15_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's architecture with random weights, fp32."""
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    text_config = clip_text_config(tokenizer, hidden_size=768, intermediate_size=3072, heads=12, layers=12)
    text_encoder = CLIPTextModel(text_config)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet_step.sd15_unet(seed),
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def prepare(work: Path, unet: str = "sd15") -> Path:
    """The model folder with its artifacts (``ARTIFACTS``) under ``work``, each built unless one
    this mixdiff can load, made with its recipe, is already there."""
    folder = work / f"{unet}-random"
    stale = {}
    for name, method in ARTIFACTS.items():
        artifact = folder / "quantized" / name
        try:
            if verify(artifact)["recipe"] != method.recipe():
                raise ArtifactError("made with another recipe than this mixdiff's")
        except ArtifactError as exc:
            if artifact.exists():
                unet_step.say(f"rebuilding {artifact}: {exc}", "service")
                shutil.rmtree(artifact)
            stale[name] = method
    if not stale:
        return folder
    pipe = sd15_pipeline() if unet == "sd15" else build_tiny_pipeline("sd")
    if not (folder / "model_index.json").is_file():
        pipe.save_pretrained(folder)
    inputs = [unet_step.random_inputs(pipe.unet, t, seed=i) for i, t in enumerate(_TIMESTEPS)]
    for number, (name, method) in enumerate(stale.items(), 1):
        artifact = folder / "quantized" / name
        unet_step.say(f"building the {name} artifact ({number}/{len(stale)}, minutes)", "service")
        build_from_inputs(method, pipe, inputs, artifact, _OPTIONS, source={"inputs": "random, at spread timesteps"})
    # The build's memory (gigabytes for SD 1.5) back to the system before the servers start
    # beside this process: kept, it and a compiled server's worker ran the machine out of memory.
    del pipe, inputs
    gc.collect()
    malloc.release()
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory(pid: int) -> dict:
    """Resident and peak resident bytes of a process (Linux /proc)."""
    return {"rss_bytes": unet_step.rss_bytes(pid), "peak_rss_bytes": unet_step.peak_rss_bytes(pid)}


def _ready_worker(client: httpx.Client) -> dict | None:
    try:
        r = client.get("/health/ready")
    except httpx.TransportError:
        return None
    return r.json()["workers"][0] if r.status_code == 200 else None


def measure(folder: Path, *, mode: str, rounds: int, size: int, steps: int, log: Path) -> dict:
    """Start ``mixdiff serve`` on ``folder`` running BF16 the ``mode`` way (``BF16_MODES``); its start-up,
    memory and generation times."""
    bf16, compile, _ = BF16_MODES[mode]
    port = _free_port()
    cores = len(os.sched_getaffinity(0))
    command = [
        sys.executable, "-m", "app.cli", "serve", "--model", str(folder), "--port", str(port),
        "--precisions", f"{bf16},int8", "--workers", "1", "--cores-per-worker", str(cores),
        "--request-timeout", "3600", "--queue-size", "1", *(["--compile"] if compile else []),
    ]  # fmt: skip
    unet_step.say(f"starting the server, BF16 {mode}", "service")
    start = time.perf_counter()
    with open(log, "ab") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600) as client:
            while (worker := _ready_worker(client)) is None:
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited with code {server.returncode}; see {log}")
                time.sleep(0.2)
            ready_seconds = time.perf_counter() - start
            at_ready = _memory(worker["pid"])
            unet_step.say(f"ready in {ready_seconds:.0f} s", "service")
            times: dict[str, list[dict]] = {label: [] for label in schedules(bf16)}
            for done in range(rounds):
                for label, precision in schedules(bf16).items():
                    unet_step.say(f"round {done + 1}/{rounds}: a {steps}-step image, {label}", "service")
                    body = {"prompt": "a red circle", "steps": steps, "width": size, "height": size, "seed": 0,
                            "precision": precision}  # fmt: skip
                    r = client.post("/generate", json=body, headers={"Accept": "application/json"})
                    r.raise_for_status()
                    out = r.json()
                    by_precision = {}
                    for step in out["steps"]:
                        by_precision.setdefault(step["precision"], []).append(step["seconds"])
                    times[label].append({**out["timings"], "schedule": out["schedule"], "by_precision": by_precision})
            memory = _memory(worker["pid"])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    return {
        "bf16": mode,
        "ready_seconds": round(ready_seconds, 2),
        "worker_rss_at_ready_bytes": at_ready["rss_bytes"],
        "worker_rss_bytes": memory["rss_bytes"],
        "worker_peak_rss_bytes": memory["peak_rss_bytes"],
        "schedules": {label: _summary(runs) for label, runs in times.items()},
    }


def _summary(runs: list[dict]) -> dict:
    runs_of = [(p, len(list(group))) for p, group in itertools.groupby(runs[0]["schedule"])]
    median = {key: round(statistics.median(r[key] for r in runs), 3) for key in ("total", "steps", "vae_decode")}
    step = {  # each precision's mean step in each run (what the total adds up), median over the runs
        p: round(statistics.median(statistics.fmean(r["by_precision"][p]) for r in runs), 3)
        for p in runs[0]["by_precision"]
    }
    return {
        "steps": " ".join(f"{p}×{n}" for p, n in runs_of),
        **{f"{k}_seconds": v for k, v in median.items()},
        "step_seconds": step,
    }


def run(work: Path, *, unet: str = "sd15", modes=tuple(BF16_MODES), rounds: int = 1, steps: int = 50) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    folder = prepare(work, unet)
    prepare_seconds = time.perf_counter() - start
    malloc.release()  # the build's memory, before the server's workers need theirs
    manifests = {name: json.loads((folder / "quantized" / name / "manifest.json").read_text()) for name in ARTIFACTS}
    size = 512 if unet == "sd15" else 64
    runs = [
        measure(folder, mode=mode, rounds=rounds, size=size, steps=steps, log=work / "server.log")
        for mode in modes
    ]
    for r in runs:
        base = r["schedules"][BASELINE]["total_seconds"]
        for s in r["schedules"].values():
            s[f"vs_{BASELINE}"] = round(s["total_seconds"] / base, 3)
    return {
        "model": f"{unet} architecture, random weights",
        "size": size,
        "steps": steps,
        "rounds": rounds,
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "cpu": unet_step.cpu_model(),
        "prepare_seconds": round(prepare_seconds, 1),
        "artifacts": {
            name: {k: m[k] for k in ("artifact_bytes", "load_seconds", "load_rss_bytes", "build_seconds")}
            for name, m in manifests.items()
        },
        "runs": runs,
    }


def markdown(result: dict) -> str:
    gb = 1 << 30
    lines = [
        (
            f"{result['model']}, {result['size']}x{result['size']} px, {result['steps']} steps, CFG, one worker on "
            f"{result['cores']} cores, torch {result['torch']}, {result['cpu']}, median of {result['rounds']} "
            "round(s), schedules in turn within a round."
        ),
        "",
        (
            "| UNets | start-up to ready (s) | worker RSS at ready / peak (GB) | schedule | steps | total (s) "
            f"| denoising (s) | mean step (s) | VAE decode (s) | vs {BASELINE} |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        unets = f"{BF16_MODES[r['bf16']][2]}, int8 artifact"
        memory = f"{r['worker_rss_at_ready_bytes'] / gb:.1f} / {r['worker_peak_rss_bytes'] / gb:.1f}"
        for label, s in r["schedules"].items():
            lines.append(
                f"| {unets} | {r['ready_seconds']:.0f} | {memory} | {label} | {s['steps']} | {s['total_seconds']:.1f} "
                f"| {s['steps_seconds']:.1f} | {', '.join(f'{p} {t:.2f}' for p, t in s['step_seconds'].items())} "
                f"| {s['vae_decode_seconds']:.1f} | {s[f'vs_{BASELINE}']:.2f}x |"
            )
    lines.append("")
    for name, a in result["artifacts"].items():
        lines.append(
            f"Artifact {name}: {a['artifact_bytes'] / gb:.2f} GB, loads in {a['load_seconds']:.1f} s "
            f"({a['load_rss_bytes'] / gb:.2f} GB RSS) when built; build {json.dumps(a['build_seconds'])}."
        )
    return "\n".join(lines) + "\n"
