"""The import rules of docs/ARCHITECTURE.md, checked on the source (ast) and in a process
that has served INT8 steps."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "bench", "common", "distillation", "kernels", "quantization", "shapes")
#: What each package may import of the others (``app`` and ``bench`` sit on top and may import all).
ALLOWED = {
    "common": set(),
    "distillation": {"common"},
    "kernels": set(),
    "quantization": {"kernels", "common"},
    "shapes": {"app", "common", "kernels", "quantization"},
}
#: Modules a server never needs: what calibrates, trains, exports, packages or scans.
BUILD_MODULES = (
    "common.training",
    "distillation",
    "quantization.aoti_codegen",
    "quantization.build",
    "quantization.calibration",
    "quantization.graph",
    "quantization.methods",
    "quantization.package",
    "quantization.quantizer",
    "quantization.sensitivity",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_libraries_import_only_what_they_may(package):
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(package)
        for name in _imports(path)
        if name.split(".")[0] not in ALLOWED[package] | {package}
    }
    assert not wrong, sorted(wrong)


def test_the_serving_runtime_imports_no_build_module():
    """``quantization.runtime`` and everything of the project it imports, followed through."""
    modules = {_module_name(p): p for package in PACKAGES for p in _sources(package)}
    seen, todo = set(), ["quantization.runtime"]
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        todo.extend(_imports(modules[name]))
    assert not [m for m in seen if m.startswith(BUILD_MODULES)], sorted(seen)


def test_the_import_checks_see_a_violation(tmp_path, monkeypatch):
    """The checks above can fail: a library module importing ``app`` is caught."""
    bad = tmp_path / "quantization" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("def f():\n    from app.settings import Settings\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _imports(bad) == {"app.settings", "app.settings.Settings"}
    with pytest.raises(AssertionError):
        test_libraries_import_only_what_they_may("quantization")


@pytest.mark.slow
def test_a_process_serving_int8_steps_loads_no_build_module():
    """The embedded model with its shipped INT8 artifact, two steps run in INT8, as a worker runs them."""
    script = f"""
import sys
from app.pipeline.loop import MixedPrecisionPipeline
from app.pipeline.types import GenerationParams
pipe = MixedPrecisionPipeline.load("{ROOT / 'models' / 'mixdiff-shapes'}", precisions=["bf16", "int8"])
pipe.generate(GenerationParams(prompt="a red circle", steps=2, seed=0), ["int8", "int8"])
print(sorted(m for m in sys.modules if m.startswith({BUILD_MODULES!r})))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
