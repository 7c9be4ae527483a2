"""The operator's Prometheus metrics, served on :8080/metrics (POLYVIVID_METRICS_PORT)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry()
RECONCILES = Counter("polyvivid_operator_reconciles", "reconciles by kind and result (success, invalid, error)",
                     ["kind", "result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("polyvivid_operator_reconcile_seconds", "seconds per reconcile", ["kind"],
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)

_phases: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> phase
_seen: set[tuple[str, str]] = set()  # (kind, phase) ever reported: shown as 0 once no resource is in it
_steps: dict[tuple[str, str], int] = {}  # (namespace, name) of a training -> its progress.json step


class _Resources:
    """Counted from the recorded phases at each scrape:
    polyvivid_operator_resources{kind, phase}: how many resources are in each phase;
    polyvivid_operator_resource_phase{kind, namespace, name, phase}: 1 per resource, its current phase
      (what the alert rules select on: Failed, a service not Ready);
    polyvivid_operator_training_step{namespace, name}: the step in each training's progress.json
      (unchanged for long while Running: the training-stalled alert)."""

    def collect(self):
        phases = list(_phases.items())
        totals = GaugeMetricFamily("polyvivid_operator_resources", "resources by kind and phase",
                                   labels=["kind", "phase"])
        counts = Tally((kind, phase) for (kind, _, _), phase in phases)
        for key in sorted(_seen | set(counts)):
            totals.add_metric(list(key), counts.get(key, 0))
        yield totals
        each = GaugeMetricFamily("polyvivid_operator_resource_phase", "1 for each resource, labelled with its phase",
                                 labels=["kind", "namespace", "name", "phase"])
        for (kind, namespace, name), phase in sorted(phases):
            each.add_metric([kind, namespace, name, phase], 1)
        yield each
        steps = GaugeMetricFamily("polyvivid_operator_training_step", "optimizer step of each training (progress.json)",
                                  labels=["namespace", "name"])
        for (namespace, name), step in sorted(_steps.items()):
            steps.add_metric([namespace, name], step)
        yield steps


REGISTRY.register(_Resources())


def set_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Record a resource's phase (None: it is gone)."""
    if phase is None:
        _phases.pop((kind, namespace, name), None)
        if kind == "PolyVividTraining":
            _steps.pop((namespace, name), None)
    else:
        _phases[(kind, namespace, name)] = phase
        _seen.add((kind, phase))


def set_training_step(namespace: str, name: str, step: int | None) -> None:
    if step is not None:
        _steps[(namespace, name)] = int(step)


def reset() -> None:
    """Forget all phases (a new operator run in this process re-learns them from the API server)."""
    _phases.clear()
    _seen.clear()
    _steps.clear()


def serve(port: int, addr: str = "0.0.0.0"):
    server, _ = start_http_server(port, addr=addr, registry=REGISTRY)
    return server
