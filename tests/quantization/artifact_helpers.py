"""The tiny artifacts' build options, and running an artifact as the server would, in a process of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from quantization.build import BuildOptions

#: Calibration of the shared artifact: small, but every timestep of a short trajectory.
OPTIONS = BuildOptions(sampler="trajectory", steps=4, holdout_every=4)
PROMPTS = ["a red circle", "a small blue square on a white background"]

_LOAD_AND_RUN = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from app.pipeline.tiny import build_tiny_pipeline
    from quantization.runtime import load_variant

    folder, inputs, output = sys.argv[1:]
    variant = load_variant(Path(folder), build_tiny_pipeline("sd", seed=0))
    outs = [variant(*args) for args in torch.load(inputs)]
    torch.save({"precision": variant.precision, "outputs": outs}, output)
    """
)


def run_in_fresh_process(folder: Path, calls: list[tuple], tmp_path: Path) -> dict:
    """Load the artifact ``folder`` for the tiny pipeline in a new Python process, as the server
    does, and run it on ``calls`` (UNet arguments); ``{"precision", "outputs"}``."""
    torch.save(calls, tmp_path / "inputs.pt")
    subprocess.run(
        [sys.executable, "-c", _LOAD_AND_RUN, str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        check=True,
        timeout=600,
    )
    return torch.load(tmp_path / "out.pt")


def rel_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum() / (b**2).sum())
