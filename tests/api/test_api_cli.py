"""``mixdiff serve`` flags (generated from the settings) and ``mixdiff generate``."""

from __future__ import annotations

import argparse
import json
import socket
import time

import pytest
from PIL import Image

from app import __version__
from app.cli import main
from app.commands import serve
from app.settings import Settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_every_setting_is_a_flag(capsys):
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    serve.register(subparsers)
    help_text = subparsers.choices["serve"].format_help()
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in help_text
        assert f"MIXDIFF_{name.upper()}" in help_text


def test_flags_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("MIXDIFF_WORKERS", "2")
    monkeypatch.setenv("MIXDIFF_QUEUE_SIZE", "3")
    settings = serve.settings_from_args(
        parse("--workers", "1", "--no-compile", "--precisions", "fp32,bf16", "--cores-per-worker", "1")
    )
    assert (settings.workers, settings.queue_size, settings.compile) == (1, 3, False)
    assert settings.precisions == ["fp32", "bf16"]
    assert settings.cores_per_worker == 1
    assert serve.settings_from_args(parse("--compile")).compile is True


def test_serve_refuses_slices_that_do_not_fit(capsys):
    assert main(["serve", "--model", "tiny-random", "--workers", "64", "--cores-per-worker", "64"]) == 2
    assert "do not fit" in capsys.readouterr().err


def test_generate_writes_a_png_and_prints_every_step(tmp_path, capsys):
    out = tmp_path / "image.png"
    schedule = json.dumps({"high": "fp32", "low": "bf16", "first": 1, "last": 1})
    argv = ["generate", "--model", "tiny-random", "--prompt", "a red circle", "--steps", "3", "--precision", schedule]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert [line.split()[2] for line in printed.splitlines() if line.startswith("step")] == ["fp32", "bf16", "fp32"]
    assert Image.open(out).size == (64, 64)


def test_generate_refuses_an_unknown_precision_and_lists_the_models(tmp_path, capsys):
    argv = ["generate", "--model", "tiny-random", "--prompt", "x", "--steps", "2", "--precision", "int4"]
    assert main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    assert "precision 'int4' is not available for this model; available: fp32, bf16" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"mixdiff {__version__}\n"


@pytest.mark.parametrize(
    "command, shown",
    [
        (["eval"], ["(default: 100)", "default: the model's (else ddim)"]),
        (["generate"], ["default: the model's (else ddim)", "(default: bf16)"]),
        (["bench"], ["(default: sd15)"]),
        (["quantize", "ptq"], ["(default: trajectory)", "(default: the model's, else 7.5)"]),
        (["quantize", "qat"], ["(default: 400)", "(default: 1e-05)"]),
    ],
)
def test_every_command_shows_its_defaults(capsys, command, shown):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for default in shown:
        assert default in help_text


def test_serve_fails_at_once_on_a_port_in_use(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        assert main(["serve", "--model", "tiny-random", "--port", str(port)]) == 2
    assert time.monotonic() - started < 5  # before any worker loads
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err
