"""``mixdiff serve`` flags (generated from the settings) and ``mixdiff generate``."""

from __future__ import annotations

import argparse
import json

from PIL import Image

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


def test_generate_refuses_an_unknown_precision(tmp_path, capsys):
    argv = ["generate", "--model", "tiny-random", "--prompt", "x", "--steps", "2", "--precision", "int4"]
    assert main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown precision 'int4'" in capsys.readouterr().err
