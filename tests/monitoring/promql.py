"""Metric names referenced by a PromQL expression, and names exposed on a /metrics page.

A small lexer, not a full parser: enough for the expressions of our dashboard and rules, and
strict in the direction that matters (an unknown identifier is reported as a metric name).
"""

from __future__ import annotations

import re

import requests
from prometheus_client.parser import text_string_to_metric_families

KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (function names, keywords and labels excluded)."""
    # Grafana's label_values(metric, label) is a variable query, not PromQL.
    if expr.lstrip().startswith("label_values("):
        match = _LABEL_VALUES.match(expr.strip())
        return {match.group(1)} if match else set()
    text = re.sub(r"#[^\n]*", " ", expr)  # PromQL comments (ours hold no '#' inside strings)
    text = _STRINGS.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables such as $__rate_interval
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def exposed_names(url: str) -> set[str]:
    """Sample names on a /metrics page (histograms give *_bucket/_count/_sum, counters *_total)."""
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return {sample.name for family in text_string_to_metric_families(response.text) for sample in family.samples}


def dashboard_exprs(dashboard: dict) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets (rows included) and variable queries."""
    exprs = []

    def walk(panels):
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs
