"""``mixdiff quantize`` and ``mixdiff bench`` refuse bad arguments with a clear message, before any work."""

from __future__ import annotations

import pytest

from app.cli import main


def test_quantize_needs_a_pipeline_folder(tmp_path, capsys):
    assert main(["quantize", "ptq", "--model", str(tmp_path)]) == 2
    assert "not a diffusers pipeline folder" in capsys.readouterr().err


def test_quantize_will_not_overwrite_an_artifact(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "quantized" / "int8").mkdir(parents=True)
    assert main(["quantize", "ptq", "--model", str(tmp_path), "--out", "int8"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["quantize", "ptq", "--sampler", "gauss"], "invalid choice: 'gauss'"),
        (["quantize", "ptq", "--timestep-groups", "0"], "must be at least 1, got 0"),
        (["quantize", "ptq", "--fallback-budget", "-1"], "must be at least 0, got -1"),
    ],
)
def test_quantize_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_rejects_unknown_variant(capsys):
    assert main(["bench", "--variants", "int4-compiled"]) == 2
    assert "unknown variant(s) int4-compiled" in capsys.readouterr().err


def test_bench_service_rejects_unknown_bf16_mode(capsys):
    assert main(["bench", "--service", "--bf16", "eager,jit"]) == 2
    assert "unknown --bf16 mode(s) jit; known: eager, compiled, aot" in capsys.readouterr().err


def test_cli_choices_match_the_library():
    """The commands repeat these names so that ``--help`` need not import torch."""
    from app.commands import bench as bench_command
    from app.commands import quantize as quantize_command
    from bench import service, unet_step
    from quantization import calibration
    from quantization.methods import qat

    assert quantize_command._SAMPLERS == calibration.SAMPLERS
    assert quantize_command._TIMESTEP_LAWS == qat.TIMESTEP_LAWS
    defaults = (quantize_command.EXAMPLES, quantize_command.ROLLOUT_TRAJECTORIES, quantize_command.CAPTION_DROPOUT)
    assert defaults == (qat.EXAMPLES, qat.ROLLOUT_TRAJECTORIES, qat.CAPTION_DROPOUT)
    assert bench_command._VARIANTS == unet_step.VARIANTS
    assert bench_command._UNETS == tuple(unet_step.ARCHITECTURES)
    assert bench_command._BF16_MODES == tuple(service.BF16_MODES)


def test_every_method_has_its_arguments():
    from app.commands import quantize as quantize_command
    from quantization.methods import METHODS

    assert set(quantize_command.METHOD_ARGUMENTS) == set(METHODS)
