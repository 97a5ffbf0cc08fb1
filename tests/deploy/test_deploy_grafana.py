"""Grafana: provisioning points at the compose stack's Prometheus by a fixed uid, the
dashboards use it, lay out, show what the issue asks for, and name only exported metrics."""

from __future__ import annotations

import json

import pytest
import yaml
from deploy_queries import DASHBOARDS, DEPLOY, REPO, dashboard_queries, metric_names

PROVISIONING = DEPLOY / "grafana" / "provisioning"


@pytest.fixture(scope="module")
def datasource() -> dict:
    (datasource,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    return datasource


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_the_datasource_is_the_compose_prometheus_with_a_fixed_uid(datasource, compose):
    assert datasource["type"] == "prometheus" and datasource["uid"]
    host_port = datasource["url"].removeprefix("http://")
    service, port = host_port.split(":")
    assert service in compose["services"], f"the datasource points at {service!r}, not a compose service"
    assert any(p.endswith(f":{port}") for p in compose["services"][service]["ports"])


def test_the_dashboards_provider_reads_the_mounted_dashboards(compose):
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "mixdiff.yml").read_text())["providers"]
    mounts = dict(volume.split(":")[:2][::-1] for volume in compose["services"]["grafana"]["volumes"])
    assert provider["options"]["path"] in mounts, "the provider's path is not a Grafana volume"
    assert (REPO / mounts[provider["options"]["path"]]).resolve() == DASHBOARDS[0].parent


def test_every_panel_queries_the_provisioned_datasource(datasource):
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = dashboard["templating"]["list"]
        for where in [*_panels(dashboard), *variables]:
            assert where["datasource"]["uid"] == datasource["uid"], f"{path.name}: {where.get('title', where.get('name'))}"
            for target in where.get("targets", []):
                assert target["datasource"]["uid"] == datasource["uid"], f"{path.name}: {where['title']}"


def test_dashboards_have_unique_uids_and_fit_the_grid():
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(set(uids)) == len(uids) == len(DASHBOARDS)
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(set(ids)) == len(ids), f"{path.name}: panel ids repeat"
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, f"{path.name}: {panel['title']} leaves the grid"


def test_the_dashboards_show_what_operators_watch():
    panels = [p for path in DASHBOARDS for p in _panels(json.loads(path.read_text()))]
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels}

    def some(test) -> bool:
        return any(test(title, expr) for title, expr in exprs.items())

    step = "mixdiff_denoise_step_seconds_bucket"
    for q in ("0.5", "0.9", "0.99"):
        assert some(lambda t, e, q=q: f"histogram_quantile({q}" in e and step in e and "by (precision, le)" in e), q
    assert any(p["type"] == "heatmap" and step in p["targets"][0]["expr"] for p in panels), "no step heatmap"
    assert some(lambda t, e: "mixdiff_request_duration_seconds_bucket" in e), "no request latency"
    assert some(lambda t, e: "mixdiff_queue_depth" in e) and some(lambda t, e: "mixdiff_queue_wait_seconds" in e)
    assert some(lambda t, e: "mixdiff_images_total" in e and "* 60" in e), "no images per minute"
    assert some(lambda t, e: "by (reason)" in e and "mixdiff_failures_total" in e), "no failures by reason"
    assert some(lambda t, e: "mixdiff_workers_busy" in e), "no busy/idle workers"
    assert some(lambda t, e: "process_resident_memory_bytes" in e), "no process memory"
    for path in DASHBOARDS:
        top = [p for p in json.loads(path.read_text())["panels"] if p["gridPos"]["y"] == 0]
        assert top and all(p["type"] == "stat" for p in top), f"{path.name}: the top row is not stat panels"


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: q.where)
def test_dashboards_name_only_defined_metrics(query, defined_metric_names):
    names = metric_names(query.expr)
    assert names, f"{query.where}: no metric found in {query.expr!r}"
    assert names <= defined_metric_names, f"{query.where}: not exported: {sorted(names - defined_metric_names)}"
