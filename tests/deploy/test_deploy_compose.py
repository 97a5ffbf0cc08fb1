"""docker-compose.yml: the app, Prometheus and Grafana with health checks, wired to
files that exist and to settings the service knows. (No Docker engine runs here: the
file is checked as data, with the defaults of its ${VAR:-default} references.)"""

from __future__ import annotations

import json
import os
import posixpath
import re

import pytest
import yaml
from deploy_queries import DEPLOY, REPO

from app.settings import Settings

_REFERENCE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def with_defaults(value):
    """A compose value with every ${VAR:-default} replaced by its default."""
    if not isinstance(value, str):
        return value
    return _REFERENCE.sub(lambda m: m[2] or "", value)


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def bind_mounts(service: dict) -> dict[str, str]:
    """container path -> host path, for the mounts of host paths."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = with_defaults(volume).split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def test_the_stack_is_the_app_prometheus_and_grafana_with_health_checks(services):
    assert {"mixdiff", "prometheus", "grafana"} <= set(services)
    for name in ("mixdiff", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"
    conditions = [d["condition"] for s in services.values() for d in s.get("depends_on", {}).values()]
    assert "service_healthy" in conditions


def test_the_app_health_check_is_the_images(services):
    dockerfile = (REPO / "Dockerfile").read_text()
    command = services["mixdiff"]["healthcheck"]["test"][1:]
    assert f"CMD {json.dumps(command)}" in dockerfile


def test_every_host_path_exists(services):
    build = services["mixdiff"]["build"]
    context = REPO / (build if isinstance(build, str) else build["context"])
    assert (context / "Dockerfile").is_file()
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert (REPO / source).exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_the_app_environment_is_made_of_known_settings(services, monkeypatch):
    environment = services["mixdiff"]["environment"]
    unknown = {key for key in environment if key.removeprefix("MIXDIFF_").lower() not in Settings.model_fields}
    assert not unknown, f"not settings of the service: {sorted(unknown)}"
    for key in list(os.environ):
        if key.startswith("MIXDIFF_"):
            monkeypatch.delenv(key)
    for key, value in environment.items():
        if value is not None:  # a bare key passes the host's value on
            monkeypatch.setenv(key, str(with_defaults(value)))
    settings = Settings()
    assert settings.host == "0.0.0.0"


def _cpus(cpuset: str) -> int:
    count = 0
    for part in cpuset.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def test_workers_and_cores_come_from_the_environment_and_fit_the_cpuset(services):
    app = services["mixdiff"]
    for key in ("MIXDIFF_WORKERS", "MIXDIFF_CORES_PER_WORKER", "MIXDIFF_FIRST_CORE"):
        assert _REFERENCE.fullmatch(str(app["environment"][key])), f"{key} is not set from the environment"
    assert _REFERENCE.fullmatch(app["cpuset"]), "cpuset is not set from the environment"
    workers = int(with_defaults(app["environment"]["MIXDIFF_WORKERS"]))
    cores = int(with_defaults(app["environment"]["MIXDIFF_CORES_PER_WORKER"]))
    assert workers * cores <= _cpus(with_defaults(app["cpuset"]))


def test_prometheus_scrapes_the_app_and_loads_the_mounted_rules(services):
    mounts = bind_mounts(services["prometheus"])
    config_path = next(arg.split("=", 1)[1] for arg in services["prometheus"]["command"] if arg.startswith("--config"))
    assert (REPO / mounts[config_path]).resolve() == DEPLOY / "prometheus" / "prometheus.yml"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for pattern in config["rule_files"]:
        directory = posixpath.join(posixpath.dirname(config_path), posixpath.dirname(pattern))
        assert directory in mounts, f"rule files {pattern} are not mounted"
        assert list((REPO / mounts[directory]).glob(posixpath.basename(pattern))), f"no rule file for {pattern}"
    (job,) = config["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and with_defaults(services[host]["environment"]["MIXDIFF_PORT"]) == port
