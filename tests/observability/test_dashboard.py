"""The Grafana dashboard (charts/polyvivid-operator/files/dashboard.json) parses, has the training,
serving, curation and operator panels, and every query (and every alert expression) names a series the
project exports: the operator's registry, the workloads' table (polyvivid/telemetry.py), or Ray Serve's
own metrics as defined in the installed Ray. tests/serve/test_http_api.py also finds the serving ones
in a real Ray scrape."""

from __future__ import annotations

from pathlib import Path

import ray.serve

from polyvivid.telemetry import SUFFIXES, exported_names
from polyvivid_operator.metrics import REGISTRY

from .promql import dashboard, dashboard_queries, metric_names, queried_names


def operator_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        kind = {"counter": "counter", "histogram": "histogram"}.get(family.type, "gauge")
        names |= {family.name + suffix for suffix in SUFFIXES[kind]}
    return names


def ray_serve_defines(name: str) -> bool:
    """ray_serve_X(_total|_bucket|...) is exported by Ray when its source declares metric "serve_X"."""
    base = name.removeprefix("ray_")
    for suffix in ("_total", "_bucket", "_sum", "_count"):
        base = base.removesuffix(suffix)
    source = Path(ray.serve.__file__).parent / "_private"
    return any(f'"{base}"' in path.read_text() for path in source.glob("*.py"))


def test_the_dashboard_has_its_rows_and_queries():
    board = dashboard()
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Training", "Serving", "Curation", "Operator"]
    titles = {p["title"] for p in board["panels"]}
    assert {"Loss", "Samples per second", "Generation latency", "Queue", "Rejections", "Reconciles"} <= titles
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_names_an_exported_metric():
    known = operator_names() | exported_names()
    unknown = set()
    for name in queried_names():
        if name in known:
            continue
        if name.startswith("ray_serve_") and ray_serve_defines(name):
            continue
        unknown.add(name)
    assert not unknown, f"queried but not exported: {sorted(unknown)}"
    # and the check has teeth: each part of the project is queried at least once
    names = queried_names()
    for prefix in ("polyvivid_operator_", "polyvivid_train_", "ray_polyvivid_", "ray_serve_"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_the_name_extraction_finds_a_misspelt_metric():
    assert metric_names('sum by (kind) (rate(polyvivid_operator_reconcile_total{kind="x"}[5m]))') == \
        {"polyvivid_operator_reconcile_total"}
    assert "polyvivid_operator_reconcile_total" not in operator_names()  # the real one is reconciles_total
    assert not ray_serve_defines("ray_serve_no_such_metric_total")
    assert all(metric_names(q) for q in dashboard_queries())
