"""Taking ``mixdiff bench`` to a host with its own PyTorch: the command needs none of the
server's packages, says what the host lacks before it builds anything, and the wheels to
carry are mixdiff's pins."""

from __future__ import annotations

import sys

import pytest

from app import cli
from bench import wheelhouse


def test_bench_needs_none_of_the_servers_packages(monkeypatch, capsys):
    for name in [n for n in sys.modules if n.startswith("app.commands.") or n == "app.settings"]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("app.settings", "pydantic", "pydantic_settings", "fastapi"):
        monkeypatch.setitem(sys.modules, name, None)  # importing any of them fails

    assert cli.main(["bench", "--variants", "nope"]) == 2
    assert "unknown variant(s) nope" in capsys.readouterr().err
    with pytest.raises(ImportError):
        cli.main(["serve", "--help"])


def test_what_a_host_lacks_stops_the_bench_before_it_builds(monkeypatch, capsys):
    installed = wheelhouse._installed
    monkeypatch.setattr(wheelhouse, "_installed", lambda name: None if name == "torchao" else installed(name))

    assert cli.main(["bench", "--unet", "tiny", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "missing here: torchao (mixdiff pins 0.18.0)" in err and "python -m bench.wheelhouse" in err


def test_check_lists_missing_and_differing(monkeypatch, capsys):
    versions = {"diffusers": "0.41.0", "openvino": None, "torch": "2.10.0"}
    installed = wheelhouse._installed
    monkeypatch.setattr(wheelhouse, "_installed", lambda n: versions[n] if n in versions else installed(n))

    assert wheelhouse.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "differs: diffusers 0.41.0 (mixdiff pins 0.42.1)" in out
    assert "missing: openvino (mixdiff pins 2026.4.1)" in out
    assert "missing: torch 2.10.0: the bench needs 2.11 or later" in out
    assert wheelhouse.main(["--check", "--no-peer"]) == 1  # torch still too old
    versions["torch"] = "2.11.0+cu130"
    assert wheelhouse.main(["--check", "--no-peer"]) == 0
    versions["torch"] = None
    assert wheelhouse.main(["--check", "--no-peer"]) == 1
    assert "missing: torch (none): the bench needs 2.11 or later" in capsys.readouterr().out


def test_the_wheels_carried_are_mixdiffs_pins_for_the_hosts_python(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(wheelhouse.subprocess, "run", lambda command, check: asked.append(command))

    wanted = wheelhouse.download(tmp_path, "3.12")
    pinned = wheelhouse.pins()
    command = asked[0]
    for name in ("diffusers", "torchao", "openvino", "nncf"):
        assert f"{name}=={pinned[name]}" in wanted and f"{name}=={pinned[name]}" in command
    assert not any(w.startswith("torch==") for w in wanted)  # the host's own
    assert command[command.index("--python-version") + 1] == "3.12"
    assert "--no-deps" in command and "--only-binary=:all:" in command
