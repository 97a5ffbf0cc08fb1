"""Fixtures of the deployment checks."""

from __future__ import annotations

import pytest
from prometheus_client.metrics_core import Metric

from app.engine.metrics import Metrics


def _sample_names(family: Metric) -> set[str]:
    """The names of the samples a metric family exports once it has any."""
    suffixes = {
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "counter": ("_total", "_created"),
        "info": ("_info",),
        "summary": ("", "_sum", "_count", "_created"),
    }.get(family.type, ("",))
    return {family.name + suffix for suffix in suffixes}


@pytest.fixture(scope="session")
def defined_metric_names() -> set[str]:
    """Every sample name ``app.engine.metrics.Metrics`` can export, labelled metrics included."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names |= _sample_names(family)
    return names
