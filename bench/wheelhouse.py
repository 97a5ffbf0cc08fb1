"""Taking ``mixdiff bench`` to a host whose PyTorch is given (2.11 or later) and that has no
network: the wheels to carry, and what the host lacks.

A PyTorch host (a Xeon with AMX, say) usually has NumPy, transformers, safetensors and
ninja, and lacks diffusers, torchao and, for ``--peer openvino``, OpenVINO and NNCF. With
a package registry at hand, ``python -m bench.wheelhouse DIR --python-version 3.12``
downloads those at the versions mixdiff pins, and the few pure-Python packages they need
beyond a PyTorch image, as wheels for the host's Python (about 70 MB, OpenVINO's 59 MB
of it). On the host, from the checkout::

    python3 -m pip install --no-index --no-deps --target .bench-site DIR/*.whl
    PYTHONPATH=.bench-site python3 -m bench.wheelhouse --check
    PYTHONPATH=.bench-site python3 -m app.cli bench --peer openvino ...

``--check`` lists what the bench would still miss there (a package, a C++ compiler for
``kernels/``, torch older than 2.11) and every version that differs from mixdiff's pins,
without running anything; the bench builds all its variants in-process on the host's torch.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: What the bench imports, as distributions: ``torch`` is the host's own.
NEEDED = ("diffusers", "torchao", "transformers", "safetensors", "numpy", "ninja")
PEER = ("openvino", "nncf")
#: The wheels a PyTorch host usually lacks: these of ``NEEDED`` and ``PEER``...
CARRIED = ("diffusers", "torchao", "openvino", "nncf")
#: ...and what they need beyond a PyTorch image (pure Python).
CARRIED_DEPENDENCIES = {"importlib-metadata": "10.2.0", "openvino-telemetry": "2025.2.0", "pydot": "4.0.1"}
#: The platform tags of the wheels downloaded: x86-64 Linux with glibc 2.17 to 2.28.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux2014_x86_64")
OLDEST_TORCH = (2, 11)


def pins() -> dict[str, str]:
    """Every ``name==version`` pin of pyproject.toml, its extras included, by name."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    pinned = {}
    for line in lines:
        name, sep, rest = line.partition("==")
        if sep:
            pinned[name.split("[")[0].strip().lower()] = rest.split(";")[0].split("#")[0].strip()
    return pinned


def download(dest: Path, python_version: str) -> list[str]:
    """Download the carried wheels for CPython ``python_version`` on x86-64 Linux into ``dest``; the
    requirements asked for."""
    pinned = pins()
    wanted = [f"{name}=={pinned[name]}" for name in CARRIED]
    wanted += [f"{name}=={v}" for name, v in CARRIED_DEPENDENCIES.items()]
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
    command += ["--python-version", python_version, "--implementation", "cp", *platforms, *wanted]
    subprocess.run(command, check=True)
    return wanted


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _release(text: str) -> tuple[int, ...]:
    """(major, minor) of a version such as ``2.11.0+cu130``."""
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


def problems(peer: bool) -> tuple[list[str], list[str]]:
    """(what stops the bench here, versions that differ from mixdiff's pins), read from the installed
    packages' metadata: nothing is imported."""
    missing, differing = [], []
    torch = _installed("torch")
    if torch is None or _release(torch) < OLDEST_TORCH:
        missing.append(f"torch {torch or '(none)'}: the bench needs 2.11 or later")
    pinned = pins()
    for name in (*NEEDED, *(PEER if peer else ())):
        have = _installed(name)
        if have is None:
            missing.append(f"{name} (mixdiff pins {pinned.get(name, 'no version')})")
        elif name in pinned and have != pinned[name]:
            differing.append(f"{name} {have} (mixdiff pins {pinned[name]})")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        missing.append("a C++ compiler (c++ or g++): kernels/ and Inductor compile with it")
    return missing, differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wheelhouse", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, nargs="?", help="where to download the wheels (needs a registry)")
    parser.add_argument("--python-version", default="3.12", help="the host's Python, major.minor")
    parser.add_argument("--check", action="store_true", help="on the host: list what the bench lacks there")
    parser.add_argument("--no-peer", action="store_true", help="--check: without OpenVINO and NNCF")
    args = parser.parse_args(argv)
    if args.check:
        missing, differing = problems(peer=not args.no_peer)
        for line in differing:
            print(f"differs: {line}")
        for line in missing:
            print(f"missing: {line}")
        print("ready for mixdiff bench" if not missing else "not ready: install what is missing")
        return 1 if missing else 0
    if args.dest is None:
        parser.error("give a folder to download into, or --check")
    args.dest.mkdir(parents=True, exist_ok=True)
    wanted = download(args.dest, args.python_version)
    total = sum(path.stat().st_size for path in args.dest.glob("*.whl"))
    print(f"{len(wanted)} wheels for CPython {args.python_version} in {args.dest} ({total / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
