"""The metric names a PromQL expression selects, and the queries of the dashboard and alert rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "charts" / "polyvivid-operator" / "files"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression reads: identifiers that are not functions, keywords, label names
    (in {...}, by/without/on/ignoring lists), strings, durations or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, legend text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # $__rate_interval, $namespace
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[m.end():].lstrip()
        if following.startswith("(") or m.group().lower() in KEYWORDS:
            continue
        names.add(m.group())
    return names


def dashboard() -> dict:
    return json.loads((FILES / "dashboard.json").read_text())


def dashboard_queries() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var.get("type") == "query":  # label_values(METRIC, LABEL): the metric alone is a query
            exprs.append(re.sub(r"label_values\(\s*([^,]+),.*\)", r"\1", var["definition"]))
    return exprs


def alert_queries() -> list[str]:
    rules = yaml.safe_load((FILES / "alerts.yaml").read_text())
    return [r["expr"] for group in rules["groups"] for r in group["rules"]]


def queried_names() -> set[str]:
    return {name for expr in dashboard_queries() + alert_queries() for name in metric_names(expr)}
