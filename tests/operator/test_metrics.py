"""The operator's Prometheus endpoint, scraped over HTTP and parsed as the exposition format:
reconciles by kind and result, reconcile duration, resources by kind and phase, each resource's phase and
each training's step (the series the alert rules in charts/polyvivid-operator/files/alerts.yaml select)."""

from __future__ import annotations

import json

import requests
from prometheus_client.parser import text_string_to_metric_families

from polyvivid.storage import open_store

from ..kube.client import wait_for
from .test_training_reconcile import job_status, training_manifest


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=5).text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, metric: str, /, **labels) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_reconciles_and_resources_by_phase(kube, operator):
    kube.create(training_manifest("s3://runs/a", name="good"))
    kube.create(training_manifest("s3://runs/b", name="bad", resources={"nodes": 1, "gpusPerNode": 16}))
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


def test_each_resource_phase_and_training_step_are_exported(kube, s3_bucket, operator):
    out = f"{s3_bucket}/run"
    kube.create(training_manifest(out, name="t1"))
    wait_for(lambda: kube.get("TrainJob", "t1-train"), what="the TrainJob")
    open_store(out).write_text("progress.json", json.dumps({"status": "running", "step": 7, "loss": 0.5}))
    kube.set_status("TrainJob", "t1-train", job_status("Running", "2026-11-24T00:01:00Z"))
    running = dict(kind="PolyVividTraining", namespace="ml", name="t1", phase="Running")
    samples = wait_for(lambda: (s := scrape(operator.metrics_url))
                       and value(s, "polyvivid_operator_resource_phase", **running) == 1 and s,
                       what="the training's phase series")
    assert value(samples, "polyvivid_operator_training_step", namespace="ml", name="t1") == 7
    assert value(samples, "polyvivid_operator_resource_phase", **{**running, "phase": "Pending"}) == 0  # one series

    kube.set_status("TrainJob", "t1-train", job_status("Failed", "2026-11-24T00:02:00Z"))
    wait_for(lambda: value(scrape(operator.metrics_url), "polyvivid_operator_resource_phase",
                           **{**running, "phase": "Failed"}) == 1, what="the Failed phase")
    kube.delete("PolyVividTraining", "t1")
    wait_for(lambda: not any(name in ("polyvivid_operator_resource_phase", "polyvivid_operator_training_step")
                             for name, _ in scrape(operator.metrics_url)), what="the series to go with the resource")
