"""``mixdiff bench --peer openvino``: what it reports is composed right from the step times,
and it refuses clearly where it cannot run (OpenVINO is an optional extra, absent in CI)."""

from __future__ import annotations

from app.cli import main
from bench import openvino_peer, unet_step


def test_the_comparison_is_composed_from_the_median_steps():
    median = {"bf16-compiled": 4.0, "int8-compiled": 2.5, "openvino-bf16": 5.0, "openvino-int8": 2.0}
    peer = unet_step.versus_peer(median, steps=50, k=5)
    assert peer["step_ratio"] == {"bf16": 0.8, "int8": 1.25}
    assert peer["denoising_seconds"]["mixdiff"] == {"bf16": 200.0, "bf16/int8:5:5": 140.0, "int8": 125.0}
    assert peer["denoising_seconds"]["openvino"] == {"bf16": 250.0, "bf16/int8:5:5": 130.0, "int8": 100.0}
    table = "\n".join(unet_step.peer_markdown({"openvino": "2026.4.1", "nncf": "3.4.0", **peer}))
    assert "| int8 | int8-compiled | 1.25x |" in table
    assert "| bf16/int8:5:5 | 140.0 | 130.0 | 1.08x | 0.70x |" in table


def test_only_the_pairs_measured_are_compared():
    peer = unet_step.versus_peer({"bf16-compiled": 4.0, "openvino-bf16": 5.0})
    assert peer == {"mixdiff_variant": {"bf16": "bf16-compiled"}, "step_ratio": {"bf16": 0.8}, "denoising_seconds": {}}


def test_the_fastest_bf16_variant_measured_is_compared():
    median = {"bf16-compiled": 4.0, "bf16-aot": 3.6, "int8-compiled": 2.5, "openvino-bf16": 4.5, "openvino-int8": 2.0}
    peer = unet_step.versus_peer(median, steps=50, k=5)
    assert peer["mixdiff_variant"] == {"bf16": "bf16-aot", "int8": "int8-compiled"}
    assert peer["step_ratio"]["bf16"] == 0.8
    assert peer["denoising_seconds"]["mixdiff"]["bf16/int8:5:5"] == 136.0


def test_without_the_extra_the_peer_is_refused_by_name(monkeypatch, capsys):
    monkeypatch.setattr(openvino_peer, "available", lambda: "openvino is not installed: pip install -e '.[peer]'")
    assert main(["bench", "--peer", "openvino"]) == 2
    assert "--peer openvino: openvino is not installed: pip install -e '.[peer]'" in capsys.readouterr().err


def test_the_peer_times_steps_not_the_service(capsys):
    assert main(["bench", "--peer", "openvino", "--service"]) == 2
    assert "does not go with --service" in capsys.readouterr().err
