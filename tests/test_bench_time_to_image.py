"""``mixdiff bench --time-to-image``: the time to image is composed right from the parts' medians, a run on
the tiny models writes the table, and INT8 is built at batch 1 rather than padded to the CFG batch."""

from __future__ import annotations

import json

import pytest
import torch

from app.cli import main
from bench import openvino_peer, time_to_image, unet_step
from common import malloc
from quantization.graph import UNetGraph, example_args
from quantization.inputs import BATCH, UNetInputs, run_in_batches

MEDIAN = {
    "text-encoder-bf16": 0.2, "bf16-compiled": 2.0, "int8-compiled": 1.25, "full-vae-bf16": 3.0,
    "tiny-vae-bf16": 0.25, "openvino-text-encoder-bf16": 0.1, "openvino-bf16": 2.5, "openvino-int8": 1.5,
    "openvino-full-vae-bf16": 3.5, "openvino-tiny-vae-bf16": 0.4, "tiny-vae-int8": 0.15, "openvino-tiny-vae-int8": 0.3,
}  # fmt: skip


def _row(rows, *key):
    """The one row of ``key``: (steps, side, schedule, decoder)."""
    (row,) = [r for r in rows if (r["steps"], r["side"], r["schedule"], r["decoder"]) == key]
    return row


def test_the_time_to_image_is_composed_from_the_median_parts():
    rows = time_to_image.compose(MEDIAN, [1, 4])
    one = _row(rows, 1, "mixdiff", "bf16", "tiny")
    assert (one["seconds"], one["vs_openvino"], one["vs_openvino_fastest"]) == (2.45, 0.817, 1.289)  # 2.45 / 3.0, / 1.9
    mixed = _row(rows, 4, "mixdiff", "bf16/int8:1:1", "tiny")
    assert (mixed["denoise_seconds"], mixed["seconds"], mixed["vs_openvino"]) == (6.5, 6.95, 0.818)  # 6.95 / 8.5
    assert mixed["vs_openvino_fastest"] == 1.086  # OpenVINO's 4-step INT8 with its INT8 tiny decoder, 6.4 s
    assert not [r for r in rows if r["steps"] == 1 and r["schedule"] == "bf16/int8:1:1"]  # needs 3 steps
    assert len(rows) == 2 * (2 + 3) * 3  # sides x (1-step schedules + 4-step ones) x decoders
    int8 = _row(rows, 1, "mixdiff", "int8", "tiny-int8")
    assert (int8["seconds"], int8["vs_openvino"]) == (1.6, 0.842)  # 0.2 + 1.25 + 0.15, against 0.1 + 1.5 + 0.3

    arch = {
        "title": "SD 1.5", "latent_size": 64, "image_size": 512, "rows": rows,
        "parameters": {"unet": 859_520_964, "text_encoder": 123_060_480, "full_vae_decoder": 49_490_199,
                       "tiny_vae_decoder": 1_222_531},
        "parts": {name: {"median_seconds": s, "min_seconds": s, "rel_error_vs_fp32": 0.01, "build_seconds": 60}
                  for name, s in MEDIAN.items()},
        "tiny_vs_full": time_to_image.tiny_vs_full(MEDIAN),
    }  # fmt: skip
    result = {
        "command": "mixdiff bench --time-to-image", "threads": 2, "torch": "2.13.0+cpu", "cpu": "AMD EPYC", "rounds": 5,
        "peer": {"openvino": "2026.4.1", "nncf": "3.4.0"}, "architectures": {"sd15": arch},
    }  # fmt: skip
    md = time_to_image.markdown(result)
    assert "## SD 1.5: 512x512 px (64x64 latents); parameters: UNet 860 M, text encoder 123 M" in md
    assert "| 4 | mixdiff | bf16/int8:1:1 | tiny | 0.20 | 6.50 | 0.25 | **6.95** | 0.82x | 1.09x |" in md
    assert "Tiny decoder over the full one: mixdiff 0.08x, openvino 0.11x." in md


def test_without_the_peer_only_mixdiff_is_composed():
    mixdiff = {name: s for name, s in MEDIAN.items() if not name.startswith("openvino")}
    rows = time_to_image.compose(mixdiff, [4])
    assert {r["side"] for r in rows} == {"mixdiff"} and len(rows) == 3 * 3
    assert all(r["vs_openvino"] is None and r["vs_openvino_fastest"] is None for r in rows)
    assert time_to_image.tiny_vs_full(mixdiff) == {"mixdiff": 0.083}


@pytest.fixture
def quick_builds(monkeypatch):
    """The UNet variants run as the FP32 UNet and OpenVINO's parts as the modules themselves: compiling them
    takes minutes, and OpenVINO is an optional extra, absent in CI. The text encoder and mixdiff's decoders
    run for real; the command runs in this process (no re-run with the malloc tunables)."""

    def build_steps(unet, variants, inputs, work):
        graph = UNetGraph(unet)
        return {name: lambda: graph(*inputs.args()) for name in variants}, {v: {"build_seconds": 0.0} for v in variants}

    monkeypatch.setattr(unet_step, "build_steps", build_steps)
    monkeypatch.setattr(openvino_peer, "available", lambda: None)
    monkeypatch.setattr(openvino_peer, "versions", lambda: {"openvino": "2026.4.1", "nncf": "3.4.0"})
    monkeypatch.setattr(openvino_peer, "bf16_call", lambda module, example: (lambda: module(*example), 0.0))
    monkeypatch.setattr(openvino_peer, "int8_call", lambda module, example, calibration: (lambda: module(example), 0.0))
    monkeypatch.setattr(malloc, "with_tunables", lambda environ: None)


def test_a_tiny_run_writes_the_parts_and_the_composed_table(quick_builds, tmp_path, capsys):
    out = tmp_path / "time-to-image"
    argv = ["bench", "--time-to-image", "--archs", "tiny", "--steps", "1,3", "--rounds", "1", "--peer", "openvino",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "[tiny] timing 14 parts, 1 interleaved rounds" in capsys.readouterr().out
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["command"] == "mixdiff " + " ".join(argv) and result["batch"] == 1
    arch = result["architectures"]["tiny"]
    parts = arch["parts"]
    assert set(parts) == set(MEDIAN) | {time_to_image.TINY_FP32, time_to_image.TEXT_FP32}
    assert parts["text-encoder-fp32"]["rel_error_vs_fp32"] == 0
    assert 0 < parts["text-encoder-bf16"]["rel_error_vs_fp32"] < 0.1  # BF16 against the same encoder in FP32
    assert 0 < parts["full-vae-bf16"]["rel_error_vs_fp32"] < 0.1  # BF16 against the same decoder in FP32
    assert 0 < parts["tiny-vae-bf16"]["rel_error_vs_fp32"] < 0.1
    assert 0 < parts["tiny-vae-int8"]["rel_error_vs_fp32"] < 0.1  # the INT8 build, against the FP32 decoder
    assert len(arch["rows"]) == 2 * (2 + 3) * 3
    for row in arch["rows"]:
        assert row["seconds"] == pytest.approx(row["text_seconds"] + row["denoise_seconds"] + row["decode_seconds"],
                                               abs=2e-3)  # fmt: skip
    mixed = _row(arch["rows"], 3, "mixdiff", "bf16/int8:1:1", "full")
    unet = 2 * parts["bf16-compiled"]["median_seconds"] + parts["int8-compiled"]["median_seconds"]
    assert mixed["denoise_seconds"] == pytest.approx(unet, abs=1e-3)
    md = out.with_suffix(".md").read_text()
    assert f"`{result['command']}`" in md and "## tiny test pipeline: 64x64 px (32x32 latents)" in md
    assert "| 3 | openvino | bf16/int8:1:1 | tiny |" in md


def test_unknown_architectures_are_refused_by_name(capsys):
    assert main(["bench", "--time-to-image", "--archs", "sd15,sd3"]) == 2
    assert "unknown architecture(s) sd3; known: sd15, sd21, tiny" in capsys.readouterr().err


def test_a_batch_of_one_is_exported_and_run_as_one():
    args = (torch.randn(3, 4, 8, 8), torch.full((3,), 500.0), torch.randn(3, 77, 32))
    one = UNetInputs(*(a[:1] for a in args))
    assert one.batch == 1 and example_args(one, batch=1)[0].shape[0] == 1
    assert example_args(one)[0].shape[0] == BATCH  # the artifacts' graphs: padded to the CFG batch, as before
    seen = []
    out = run_in_batches(lambda sample, *rest: seen.append(len(sample)) or sample, args, batch=1)
    assert seen == [1, 1, 1] and torch.equal(out, args[0])
