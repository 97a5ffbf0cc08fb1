"""Prometheus: the config and the rules pass promtool, the alerts pass their promtool
unit tests, and they name only metrics and failure reasons the service has."""

from __future__ import annotations

import re

import pytest
from deploy_queries import DEPLOY, RULE_FILES, alert_queries, alert_rules, metric_names
from deploy_tools import find_tool, run_tool

from app.errors import ERROR_TYPES

PROMETHEUS = DEPLOY / "prometheus"


def test_config_passes_promtool():
    result = run_tool(find_tool("promtool"), "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout, "the config does not load the rule files"


def test_rules_pass_promtool():
    result = run_tool(find_tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_pass_their_unit_tests():
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    result = run_tool(find_tool("promtool"), "test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_the_issue_asks_for_is_there():
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert any("mixdiff_queue_depth" in e for e in exprs.values()), "no alert on the queue backing up"
    assert any("mixdiff_denoise_step_seconds_bucket" in e and "precision" in e for e in exprs.values())
    assert any("mixdiff_workers_ready" in e for e in exprs.values()), "no alert on a worker down"
    assert any("mixdiff_failures_total" in e for e in exprs.values()), "no alert on the error rate"
    for name, rule in ((r["alert"], r) for r in alert_rules()):
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name


@pytest.mark.parametrize("query", alert_queries(), ids=lambda q: q.where)
def test_alerts_name_only_defined_metrics(query, defined_metric_names):
    names = metric_names(query.expr)
    assert names, f"{query.where}: no metric found in {query.expr!r}"
    assert names <= defined_metric_names, f"{query.where}: not exported: {sorted(names - defined_metric_names)}"


def test_alerts_name_only_real_failure_reasons():
    for query in alert_queries():
        for values in re.findall(r'reason\s*=~?\s*"([^"]*)"', query.expr):
            unknown = set(values.split("|")) - set(ERROR_TYPES)
            assert not unknown, f"{query.where}: no such failure reason {sorted(unknown)}"
