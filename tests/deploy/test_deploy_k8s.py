"""Kubernetes manifests: valid for the API server (kubernetes-validate --strict),
custom resources with their required fields, and consistent with each other and with
the service (settings, ports, health routes, the autoscaling metric)."""

from __future__ import annotations

import os

import pytest
import yaml
from deploy_queries import DEPLOY
from deploy_tools import find_tool, run_tool

from app.settings import Settings

K8S = DEPLOY / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))


@pytest.fixture(scope="module")
def resources() -> dict[str, dict]:
    """kind/name -> resource."""
    found = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


@pytest.fixture(scope="module")
def container(resources) -> dict:
    (container,) = resources["Deployment/mixdiff"]["spec"]["template"]["spec"]["containers"]
    return container


def test_every_manifest_passes_kubernetes_validate_strict():
    result = run_tool(find_tool("kubernetes-validate"), "--strict", *map(str, MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path):
    """The check above means something only if a typo fails it."""
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(deployment))
    assert run_tool(find_tool("kubernetes-validate"), "--strict", str(path)).returncode != 0


def test_the_service_runs_as_a_deployment_behind_a_service_with_autoscaling(resources):
    kinds = {key.split("/")[0] for key in resources}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"ConfigMap", "ServiceMonitor"} <= kinds


def test_cpu_is_whole_cores_requested_as_limited(resources, container):
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert requests == limits, "requests must equal limits (Guaranteed QoS, exclusive cores)"
    cpus = int(limits["cpu"])  # a fraction ("1500m", "1.5") fails here
    workers = int(resources["ConfigMap/mixdiff"]["data"]["MIXDIFF_WORKERS"])
    assert cpus % workers == 0, f"{cpus} CPUs do not divide between {workers} workers"


def test_probes_use_the_health_routes_on_the_served_port(container):
    port_names = {port["name"] for port in container["ports"]}
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in port_names
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/health/ready", "readinessProbe": "/health/ready", "livenessProbe": "/health/live"}
    (port,) = container["ports"]
    assert port["containerPort"] == Settings.model_fields["port"].default


def test_dev_shm_is_memory_backed(resources, container):
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    volumes = {v["name"]: v for v in resources["Deployment/mixdiff"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"


def test_the_configmap_holds_known_valid_settings(resources, container, monkeypatch):
    data = resources["ConfigMap/mixdiff"]["data"]
    assert {"configMapRef": {"name": "mixdiff"}} in container["envFrom"]
    unknown = {key for key in data if key.removeprefix("MIXDIFF_").lower() not in Settings.model_fields}
    assert not unknown and all(key.startswith("MIXDIFF_") for key in data), f"not settings: {sorted(unknown)}"
    for key in list(os.environ):
        if key.startswith("MIXDIFF_"):
            monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    assert Settings().host == "0.0.0.0"


def test_selectors_match_the_pods(resources, container):
    pod_labels = resources["Deployment/mixdiff"]["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict) -> bool:
        return selector.items() <= pod_labels.items()

    assert selects(resources["Service/mixdiff"]["spec"]["selector"])
    assert selects(resources["PodDisruptionBudget/mixdiff"]["spec"]["selector"]["matchLabels"])
    port_names = {port["name"] for port in container["ports"]}
    assert all(port["targetPort"] in port_names for port in resources["Service/mixdiff"]["spec"]["ports"])


def test_the_service_monitor_scrapes_the_services_metrics_port(resources):
    """ServiceMonitor is a custom resource: kubernetes-validate has no schema for it."""
    monitor = resources["ServiceMonitor/mixdiff"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = resources["Service/mixdiff"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"], "spec.endpoints is required"
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"


def test_autoscaling_on_queue_depth_served_by_the_adapter_rule(resources, defined_metric_names):
    hpa = resources["HorizontalPodAutoscaler/mixdiff"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mixdiff"}
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    adapter = yaml.safe_load(resources["ConfigMap/prometheus-adapter"]["data"]["config.yaml"])
    (rule,) = [r for r in adapter["rules"] if r["name"]["as"] == name]
    series = rule["seriesQuery"].split("{")[0].strip("'\"")
    assert series == "mixdiff_queue_depth" and series in defined_metric_names
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}, "a Pods metric is per pod"
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
