"""The operator's Prometheus endpoint, scraped over HTTP and parsed as the exposition format:
reconciles by kind and result, reconcile duration, resources by kind and phase."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from ..kube.client import wait_for
from .test_training_reconcile import training_manifest


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=5).text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_reconciles_and_resources_by_phase(kube, operator, tmp_path):
    kube.create(training_manifest(str(tmp_path / "a"), name="good"))
    kube.create(training_manifest(str(tmp_path / "b"), name="bad", resources={"nodes": 1, "gpusPerNode": 16}))
    kind = "PolyVividTraining"
    samples = wait_for(lambda: (s := scrape(operator.metrics_url))
                       and value(s, "polyvivid_operator_resources", kind=kind, phase="Pending") == 1
                       and value(s, "polyvivid_operator_resources", kind=kind, phase="Invalid") == 1 and s,
                       what="resources by phase")
    assert value(samples, "polyvivid_operator_reconciles_total", kind=kind, result="success") >= 1
    assert value(samples, "polyvivid_operator_reconciles_total", kind=kind, result="invalid") >= 1
    assert value(samples, "polyvivid_operator_reconcile_seconds_count", kind=kind) >= 2
    assert value(samples, "polyvivid_operator_reconcile_seconds_sum", kind=kind) > 0

    kube.delete("PolyVividTraining", "bad")
    wait_for(lambda: value(scrape(operator.metrics_url), "polyvivid_operator_resources", kind=kind, phase="Invalid") == 0,
             what="the deleted resource to leave the gauge")
