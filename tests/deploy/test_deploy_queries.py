"""The PromQL name extraction the metric checks rely on: it must never miss a name."""

from __future__ import annotations

import pytest
from deploy_queries import data_operands, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up == 0", {"up"}),
        ('sum by (job, le) (rate(a_bucket{job=~"$job",le!="x y"}[$__rate_interval]))', {"a_bucket"}),
        ("histogram_quantile(0.95, sum(rate(a_bucket[5m])) by (le)) > 1.5 * b offset 1h", {"a_bucket", "b"}),
        ("a / on(instance) group_left(worker) b", {"a", "b"}),
        ("(a or 0 * b) / c > 1e-3", {"a", "b", "c"}),
        ('absent(a{job="x"})', {"a"}),
        ('label_values(a{job=~"$job"}, instance)', {"a"}),
        ("sum without (worker) (c:recorded:rate5m)", {"c:recorded:rate5m"}),
    ],
)
def test_metric_names(expr, names):
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("expr", "operands"),
    [
        ("a / b > 0.8", ["a / b"]),
        ("a < b", ["a", "b"]),
        ('absent(a{job="x"})', ['a{job="x"}']),
        ("f(a[10m]) > 1.5 * f(a[1d] offset 1h)", ["f(a[10m])", "1.5 * f(a[1d] )"]),
        ('sum(rate(a{reason=~"x|y"}[5m])) > bool 2', ['sum(rate(a{reason=~"x|y"}[5m]))']),
    ],
)
def test_data_operands(expr, operands):
    assert data_operands(expr) == operands
