"""The PromQL queries of the deployment (dashboards, alert rules), and what they name.

Shared by the static checks (names against the metric definitions) and the
integration test (queries evaluated by a real Prometheus). PromQL is not parsed in
full: strings, label matchers, ranges and grouping clauses are blanked out, and what
is left that looks like an identifier, is not a function call and is not a keyword is
a metric name. That is enough for the queries written here, and errs on the side of
reporting too many names, never too few.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))

#: Grafana's built-in and the dashboards' own variables, as the integration test sets them:
#: windows long enough for a Prometheus scraping every second, every label value.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$job": ".+",
    "$instance": ".+",
    "$precision": ".+",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
_NUMBER = re.compile(r"^\s*-?[0-9.]+(?:e-?[0-9]+)?\s*$", re.IGNORECASE)
_ABSENT = re.compile(r"^\s*absent\((?P<inner>.*)\)\s*$", re.DOTALL)
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*\w+\s*\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Query:
    where: str  # "<file>: <panel or rule>", for messages
    expr: str
    alert: bool = False


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) selects."""
    match = _LABEL_VALUES.match(expr)
    if match:
        expr = match["selector"]
    expr = _STRING.sub('""', expr)
    expr = _OFFSET.sub(" ", expr)
    for pattern in (_BRACES, _BRACKETS, _GROUPING):
        expr = pattern.sub(" ", expr)
    return {name for name in _IDENTIFIER.findall(expr) if name not in _KEYWORDS}


def with_grafana_variables(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"a Grafana variable the tests do not know in {expr!r}"
    return expr


def dashboard_queries() -> list[Query]:
    """Every panel target and every query variable of every dashboard."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                queries.append(Query(f"{path.name}: variable {variable['name']}", variable["query"]))
        for panel in _panels(dashboard):
            for target in panel.get("targets", []):
                queries.append(Query(f"{path.name}: panel {panel['title']!r} {target['refId']}", target["expr"]))
    return queries


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def alert_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules


def alert_queries() -> list[Query]:
    return [Query(f"rules: {rule['alert']}", rule["expr"], alert=True) for rule in alert_rules()]


def split_top_level(expr: str, pattern: re.Pattern) -> list[str]:
    """``expr`` cut at the matches of ``pattern`` outside parentheses, braces, brackets and strings."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            i = expr.index(char, i + 1) + 1
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            match = pattern.match(expr, i)
            if match:
                parts.append(expr[start:i])
                start = i = match.end()
                continue
        i += 1
    parts.append(expr[start:])
    return parts


def data_operands(expr: str) -> list[str]:
    """The parts of an alert expression that a healthy, freshly started service must give data for.

    An alert that is not firing evaluates to nothing, so its threshold comparison is
    taken apart: each side that is not a number must return data. ``absent(x)`` is
    checked through ``x``. ``offset`` is removed: a Prometheus started a minute ago
    holds no data an hour back, though the expression is the same without it.
    """
    operands = []
    for part in split_top_level(expr, _COMPARISON):
        part = re.sub(r"^\s*bool\b", "", part).strip()
        if _NUMBER.match(part):
            continue
        absent = _ABSENT.match(part)
        operands.append(_OFFSET.sub("", absent["inner"] if absent else part).strip())
    return operands
