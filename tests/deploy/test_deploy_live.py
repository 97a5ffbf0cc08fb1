"""End to end: the real service and a real Prometheus on loopback.

Prometheus scrapes mixdiff (tiny random model, one worker) every second with the
deployment's own scrape job and alert rules; a few requests go through; then every
dashboard query and every alert is evaluated through Prometheus' HTTP API.

A dashboard query must return data with a finite value. An alert on a healthy service
must not fire, so its full expression must evaluate to nothing, and the sides of its
threshold comparison must return data (``deploy_queries.data_operands``): an alert
whose inner query could never match would otherwise pass unnoticed.
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from deploy_queries import (
    DEPLOY,
    REPO,
    RULE_FILES,
    Query,
    alert_queries,
    alert_rules,
    dashboard_queries,
    data_operands,
    metric_names,
    with_grafana_variables,
)
from deploy_tools import find_tool

pytestmark = pytest.mark.slow

#: Upper bounds on waiting for a process to come up; reaching one fails the test with its log.
SERVICE_START_LIMIT = 600.0
PROMETHEUS_START_LIMIT = 60.0
SCRAPE_LIMIT = 60.0
#: A request body for the tiny model: three steps, fp32 first and last, bf16 between.
GENERATE = {
    "prompt": "a red square",
    "width": 64,
    "height": 64,
    "steps": 3,
    "seed": 0,
    "precision": {"high": "fp32", "low": "bf16", "first": 1, "last": 1},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(ready, limit: float, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not ready after {limit:.0f} s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def service_environment(port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MIXDIFF_")}
    env["MIXDIFF_PORT"] = str(port)
    return env


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The base URL of a running ``mixdiff serve`` with the tiny model and one worker."""
    port = free_port()
    log = tmp_path_factory.mktemp("mixdiff") / "serve.log"
    command = [sys.executable, "-m", "app.cli", "serve", "--model", "tiny-random", "--workers", "1"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=service_environment(port), stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/health/ready").status_code == 200, SERVICE_START_LIMIT, process, log,
                   "mixdiff serve")
        yield url
    finally:
        stop(process)


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> list[dict]:
        """The result of an instant query; fails the test on a PromQL error."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = response.json()
        assert body["status"] == "success", f"{expr!r}: {body.get('error')}"
        return body["data"]["result"]


@pytest.fixture(scope="module")
def prometheus(service, tmp_path_factory):
    """A Prometheus scraping ``service`` every second with the deployment's job and rules."""
    directory = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(path) for path in RULE_FILES]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [service.removeprefix("http://")]}]
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = directory / "prometheus.log"
    command = [
        find_tool("prometheus"),
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready").status_code == 200, PROMETHEUS_START_LIMIT, process, log,
                   "prometheus")
        yield Prometheus(url), process, log
    finally:
        stop(process)


@pytest.fixture(scope="module")
def scraped(service, prometheus) -> Prometheus:
    """Prometheus after it has scraped the service before and after a few requests."""
    prom, process, log = prometheus
    # a first scrape before any request, so rates and quantiles see the requests as increases
    wait_until(lambda: prom.query('mixdiff_workers{job="mixdiff"}'), SCRAPE_LIMIT, process, log, "a first scrape")
    with httpx.Client(base_url=service, timeout=300) as client:
        for seed in range(3):
            response = client.post("/generate", json={**GENERATE, "seed": seed})
            assert response.status_code == 200, response.text
        response = client.post("/v1/images/generations", json={"prompt": "a blue circle", "size": "64x64", "steps": 2})
        assert response.status_code == 200, response.text
        response = client.post("/generate", json={**GENERATE, "width": 60})  # a client error: a failure by reason
        assert response.status_code == 422, response.text
        exported = client.get("/metrics").text
    images = re.search(r"^mixdiff_images_total (\S+)$", exported, re.MULTILINE)[1]

    def caught_up() -> bool:
        return any(float(s["value"][1]) == float(images) for s in prom.query("mixdiff_images_total"))

    wait_until(caught_up, SCRAPE_LIMIT, process, log, "a scrape after the requests")
    # three more scrapes and rule evaluations after the one that saw the last request
    first = prom.query("timestamp(mixdiff_images_total)")[0]["value"][1]
    wait_until(lambda: float(prom.query("timestamp(mixdiff_images_total)")[0]["value"][1]) >= float(first) + 3,
               SCRAPE_LIMIT, process, log, "three more scrapes")
    return prom


def exported_names(url: str) -> set[str]:
    text = httpx.get(f"{url}/metrics").text
    return {m[1] for m in re.finditer(r"^([a-zA-Z_:][\w:]*)[{ ]", text, re.MULTILINE)}


def assert_data(prom: Prometheus, expr: str, where: str) -> None:
    result = prom.query(expr)
    assert result, f"{where}: no data for {expr!r}"
    values = [float(series["value"][1]) for series in result]
    assert any(math.isfinite(v) for v in values), f"{where}: no finite value in {values} for {expr!r}"


def test_the_service_exports_every_metric_the_deployment_names(service, scraped):
    exported = exported_names(service)
    for query in [*dashboard_queries(), *alert_queries()]:
        missing = metric_names(query.expr) - exported
        assert not missing, f"{query.where}: the service does not export {sorted(missing)}"


def test_prometheus_loaded_every_alert_and_evaluates_it(scraped):
    groups = httpx.get(f"{scraped.url}/api/v1/rules").json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    for rule in alert_rules():
        assert rule["alert"] in loaded, f"{rule['alert']} was not loaded"
        assert loaded[rule["alert"]]["health"] == "ok", loaded[rule["alert"]].get("lastError")


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: q.where)
def test_every_dashboard_query_returns_data(scraped, query: Query):
    match = re.match(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$", query.expr)
    if match:  # a variable: Grafana lists the label's values over the series the selector matches
        series = scraped.query(with_grafana_variables(match["selector"]))
        assert any(match["label"] in s["metric"] for s in series), f"{query.where}: no {match['label']} values"
        return
    assert_data(scraped, with_grafana_variables(query.expr), query.where)


@pytest.mark.parametrize("query", alert_queries(), ids=lambda q: q.where)
def test_no_alert_fires_and_every_alert_sees_data(scraped, query: Query):
    assert scraped.query(query.expr) == [], f"{query.where} fires on a healthy service"
    for operand in data_operands(query.expr):
        assert_data(scraped, operand, query.where)


def test_the_container_health_check_passes_against_the_service(service):
    port = service.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "docker" / "healthcheck.py")],
        env=service_environment(int(port)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
