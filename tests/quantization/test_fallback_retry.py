"""A scan's choice of BF16 blocks that Inductor miscompiles is retried with one block fewer."""

from __future__ import annotations

import json

import pytest

from quantization import build, calibration
from quantization.build import BuildOptions, MiscompiledError, fallback_attempts
from quantization.methods.ptq import PTQConfig


def test_attempts_leave_out_the_least_sensitive_block_first():
    assert fallback_attempts(["a", "b", "c"], auto=True) == [["a", "b", "c"], ["a", "b"], ["a", "c"], ["b", "c"]]
    assert fallback_attempts(["a"], auto=True) == [["a"], []]
    assert fallback_attempts(["a", "b"], auto=False) == [["a", "b"]]  # a manual list is an order


@pytest.mark.slow
def test_a_miscompiled_auto_fallback_is_rebuilt_without_a_block(tiny_pipe, tmp_path, monkeypatch):
    """The compile check refuses the first build (as it refuses a real miscompilation); the
    artifact is then built with one block fewer and its manifest says what was refused."""
    real_check, calls = build.check_compiled, []

    def refuse_first(*args):
        calls.append(args)
        if len(calls) == 1:
            raise MiscompiledError("the compiled UNet disagrees with the quantized graph it was compiled from")
        return real_check(*args)

    monkeypatch.setattr(build, "check_compiled", refuse_first)
    options = BuildOptions(sampler="trajectory", steps=4, holdout_every=4, fallback="auto", fallback_budget=2)
    captured = calibration.capture(tiny_pipe, ["a red circle"], sampler=options.sampler, steps=options.steps)
    out = tmp_path / "quantized" / "int8"
    manifest = build.build_from_inputs(PTQConfig(), tiny_pipe, captured, out, options, source={})
    chosen = manifest["fallback"]["miscompiled"]
    assert len(calls) == 2 and len(chosen) == 1 and len(chosen[0]) == 2
    assert manifest["fallback"]["layers"] == chosen[0][:1]  # the less sensitive block left out
    assert json.loads((out / "manifest.json").read_text())["fallback"]["layers"] == chosen[0][:1]
    assert manifest["timestep_groups"][0]["compiled_vs_eager_rel_mse"] < build.COMPILE_TOLERANCE
