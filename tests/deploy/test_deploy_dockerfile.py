"""The image: the Dockerfile lints clean, what it copies exists in the build context,
and its entry point sizes OpenMP and the workers to the container's CPUs."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import yaml
from deploy_queries import REPO
from deploy_tools import find_tool, run_tool

import kernels.build
from app.settings import DEFAULT_MODEL, Settings

DOCKERFILE = REPO / "Dockerfile"


def test_dockerfile_passes_hadolint():
    result = run_tool(find_tool("hadolint"), str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def _dockerignore_patterns() -> tuple[list[str], list[str]]:
    excluded, included = [], []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            (included if line.startswith("!") else excluded).append(line.lstrip("!").replace("**/", ""))
    return excluded, included


def _in_build_context(path: str) -> bool:
    excluded, included = _dockerignore_patterns()
    parts = path.rstrip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if any(fnmatch.fnmatch(p, pattern) for p in prefixes for pattern in included):
        return True
    return not any(fnmatch.fnmatch(p, pattern) for p in prefixes for pattern in excluded)


def test_every_file_the_image_copies_is_in_the_build_context():
    copies = re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert copies, "the Dockerfile copies nothing from the build context"
    for line in copies:
        *sources, _destination = line.split()
        for source in sources:
            if source == ".":
                continue
            assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
            assert _in_build_context(source), f"COPY {source}: excluded by .dockerignore"


def test_the_image_runs_mixdiff_serve_as_a_non_root_user_with_jemalloc():
    text = DOCKERFILE.read_text()
    assert re.search(r'^CMD \["mixdiff", "serve"\]$', text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0")), f"the image runs as {user}"
    assert "LD_PRELOAD=/usr/local/lib/libjemalloc.so.2" in text and "MALLOC_CONF=" in text
    assert re.search(r"^HEALTHCHECK .*\n?.*healthcheck\.py", text, re.MULTILINE)


def test_the_image_settings_are_known_and_name_the_embedded_model():
    text = DOCKERFILE.read_text()
    settings = dict(re.findall(r"\b(MIXDIFF_\w+)=(\S+)", text))
    unknown = {
        key
        for key in settings
        if key.removeprefix("MIXDIFF_").lower() not in Settings.model_fields and key != kernels.build.ENV
    }
    assert not unknown, f"not settings of the service: {sorted(unknown)}"
    workdir = re.findall(r"^WORKDIR (\S+)$", text, re.MULTILINE)[-1]
    embedded = f"models/{DEFAULT_MODEL.name}/"
    assert f"\nCOPY {embedded} {embedded}\n" in text, "the image does not embed the default model"
    assert settings["MIXDIFF_MODEL"] == f"{workdir}/models/{DEFAULT_MODEL.name}"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert settings["MIXDIFF_MODEL"] in compose["services"]["mixdiff"]["environment"]["MIXDIFF_MODEL"]
    configmap = yaml.safe_load((REPO / "deploy" / "k8s" / "configmap.yaml").read_text())
    assert configmap["data"]["MIXDIFF_MODEL"] == settings["MIXDIFF_MODEL"]


@pytest.fixture(scope="module")
def entrypoint():
    spec = importlib.util.spec_from_file_location("entrypoint", REPO / "deploy" / "docker" / "entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("cores", "quota", "environ", "expected"),
    [
        # a cpuset: the workers already see their cores; only OpenMP is sized
        (16, None, {"MIXDIFF_WORKERS": "2"}, {"OMP_NUM_THREADS": "8"}),
        # a quota smaller than the host: the workers are sized from it
        (64, 8.0, {"MIXDIFF_WORKERS": "2"}, {"OMP_NUM_THREADS": "4", "MIXDIFF_CORES_PER_WORKER": "4"}),
        (64, 2.5, {}, {"OMP_NUM_THREADS": "2", "MIXDIFF_CORES_PER_WORKER": "2"}),
        # a quota above the cores changes nothing
        (4, 16.0, {}, {"OMP_NUM_THREADS": "4"}),
        # what the operator set is kept
        (16, None, {"MIXDIFF_CORES_PER_WORKER": "6", "OMP_NUM_THREADS": "3"}, {}),
        (64, 8.0, {"MIXDIFF_CORES_PER_WORKER": "3"}, {"OMP_NUM_THREADS": "3"}),
    ],
)
def test_entrypoint_sizes_openmp_and_workers_to_the_container(entrypoint, monkeypatch, cores, quota, environ, expected):
    monkeypatch.setattr(entrypoint, "usable_physical_cores", lambda: list(range(cores)))
    monkeypatch.setattr(entrypoint, "cpu_quota", lambda: quota)
    assert entrypoint.core_environment(environ) == expected


def test_entrypoint_runs_the_command_with_the_environment():
    env = {**os.environ, "OMP_NUM_THREADS": "3"}
    env.pop("MIXDIFF_CORES_PER_WORKER", None)
    script = "import os; print(os.environ['OMP_NUM_THREADS'])"
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "docker" / "entrypoint.py"), sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


def test_entrypoint_refuses_a_worker_count_that_is_not_a_number():
    env = {**os.environ, "MIXDIFF_WORKERS": "two"}
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "docker" / "entrypoint.py"), "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "MIXDIFF_WORKERS" in result.stderr and "Traceback" not in result.stderr
